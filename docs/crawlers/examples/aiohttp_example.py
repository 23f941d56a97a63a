"""Fetch a page through crawlguard with aiohttp: proxy credentials, crawlguard's CA, a
descriptive user agent, and Retry-After honoured (docs/crawlers/aiohttp.md)."""

import asyncio
import os
import ssl

import aiohttp

PROXY = os.environ.get("CRAWLGUARD_PROXY", "http://demo:demo-token@127.0.0.1:8080")
CA = os.environ.get("CRAWLGUARD_CA", "crawlguard-ca.pem")  # crawlguard ca --export PATH
URL = os.environ.get("CRAWLGUARD_URL", "https://site.example/")


async def polite_get(
    session: aiohttp.ClientSession, url: str, tries: int = 4
) -> tuple[int, str | None, str]:
    """GET; on 429/503 wait what Retry-After says (crawlguard always sends one) and retry."""
    tls = ssl.create_default_context(cafile=CA)  # crawlguard re-signs every HTTPS site
    for _ in range(tries):
        # the credentials in the proxy URL go on the CONNECT (Proxy-Authorization)
        async with session.get(url, proxy=PROXY, ssl=tls) as response:
            body = await response.text()
            wait = response.headers.get("Retry-After", "")
            if response.status not in (429, 503) or not wait.isdigit():
                return response.status, response.headers.get("X-Crawlguard-Decision"), body
        await asyncio.sleep(int(wait))  # other tasks keep running meanwhile
    return response.status, response.headers.get("X-Crawlguard-Decision"), body


async def main() -> None:
    # aiohttp's default user agent ("Python/3.x aiohttp/3.x") is refused as ua-generic
    headers = {"User-Agent": "DemoBot/1.0 (+https://demo.example/bot)"}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(60)) as s:
        status, decision, body = await polite_get(s, URL)
    print(status, decision)
    if decision != "allowed":
        print(body)  # crawlguard's explanation: the rule broken and how to comply


asyncio.run(main())
