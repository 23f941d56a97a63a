"""Fetch a page through crawlguard with requests: proxy credentials, crawlguard's CA, a
descriptive user agent, and Retry-After honoured (docs/crawlers/requests.md)."""

import os
import time

import requests

PROXY = os.environ.get("CRAWLGUARD_PROXY", "http://demo:demo-token@127.0.0.1:8080")
CA = os.environ.get("CRAWLGUARD_CA", "crawlguard-ca.pem")  # crawlguard ca --export PATH
URL = os.environ.get("CRAWLGUARD_URL", "https://site.example/")

session = requests.Session()
# Without this, REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment replace
# session.verify, and HTTPS_PROXY / NO_PROXY replace or bypass session.proxies.
session.trust_env = False
session.proxies = {"http": PROXY, "https": PROXY}
session.verify = CA  # crawlguard re-signs every HTTPS site with its own CA
session.headers["User-Agent"] = "DemoBot/1.0 (+https://demo.example/bot)"


def polite_get(url: str, tries: int = 4) -> requests.Response:
    """GET; on 429/503 wait what Retry-After says (crawlguard always sends one) and retry."""
    for _ in range(tries):
        response = session.get(url, timeout=60)
        wait = response.headers.get("Retry-After", "")
        if response.status_code not in (429, 503) or not wait.isdigit():
            return response
        time.sleep(int(wait))
    return response


response = polite_get(URL)
decision = response.headers.get("X-Crawlguard-Decision")
print(response.status_code, decision)
if decision != "allowed":
    print(response.text)  # crawlguard's explanation: the rule broken and how to comply
