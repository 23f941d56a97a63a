"""Fetch a page through crawlguard with httpx: proxy credentials, crawlguard's CA, a
descriptive user agent, and Retry-After honoured (docs/crawlers/httpx.md)."""

import os
import ssl
import time

import httpx

PROXY = os.environ.get("CRAWLGUARD_PROXY", "http://demo:demo-token@127.0.0.1:8080")
CA = os.environ.get("CRAWLGUARD_CA", "crawlguard-ca.pem")  # crawlguard ca --export PATH
URL = os.environ.get("CRAWLGUARD_URL", "https://site.example/")

client = httpx.Client(
    proxy=PROXY,
    verify=ssl.create_default_context(cafile=CA),  # crawlguard re-signs every HTTPS site
    headers={"User-Agent": "DemoBot/1.0 (+https://demo.example/bot)"},
    trust_env=False,  # no SSL_CERT_FILE, HTTPS_PROXY or NO_PROXY from the environment
    timeout=60,
)


def polite_get(url: str, tries: int = 4) -> httpx.Response:
    """GET; on 429/503 wait what Retry-After says (crawlguard always sends one) and retry."""
    for _ in range(tries):
        response = client.get(url)
        wait = response.headers.get("Retry-After", "")
        if response.status_code not in (429, 503) or not wait.isdigit():
            return response
        time.sleep(int(wait))
    return response


with client:
    response = polite_get(URL)
    decision = response.headers.get("X-Crawlguard-Decision")
    print(response.status_code, decision)
    if decision != "allowed":
        print(response.text)  # crawlguard's explanation: the rule broken and how to comply
