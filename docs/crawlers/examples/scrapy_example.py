"""A Scrapy spider that crawls one site through crawlguard without losing pages to 429
(docs/crawlers/scrapy.md). Run it with: scrapy runspider scrapy_example.py"""

import os

import scrapy

PROXY = os.environ.get("CRAWLGUARD_PROXY", "http://demo:demo-token@127.0.0.1:8080")
CA = os.environ.get("CRAWLGUARD_CA", "crawlguard-ca.pem")  # crawlguard ca --export PATH
URL = os.environ.get("CRAWLGUARD_URL", "https://site.example/")

# With DOWNLOAD_VERIFY_CERTIFICATES Scrapy verifies with OpenSSL's default trust, which
# SSL_CERT_FILE replaces: every HTTPS request goes through crawlguard, so its CA is the one.
os.environ["SSL_CERT_FILE"] = CA

# No delay jitter: DOWNLOAD_DELAY_JITTER since Scrapy 2.19 (which warns about the old name).
NO_JITTER = (
    {"DOWNLOAD_DELAY_JITTER": 0}
    if scrapy.version_info >= (2, 19)
    else {"RANDOMIZE_DOWNLOAD_DELAY": False}
)


class SiteSpider(scrapy.Spider):
    name = "site"
    custom_settings = {  # in a project, put these in settings.py
        "USER_AGENT": "DemoBot/1.0 (+https://demo.example/bot)",
        "ROBOTSTXT_OBEY": True,  # crawlguard refuses what robots.txt disallows anyway
        # Pace like crawlguard does: a fixed delay above the largest Crawl-delay you meet,
        # no jitter (Scrapy's default sends every other request up to 50 % early), one
        # request at a time per site.
        "DOWNLOAD_DELAY": 2.5,
        **NO_JITTER,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 1,
        # Waits Retry-After on 429/503 and paces to the interval crawlguard asks for;
        # sends every request (robots.txt too) through CRAWLGUARD_PROXY.
        "DOWNLOADER_MIDDLEWARES": {"crawlguard.contrib.scrapy.CrawlguardMiddleware": 580},
        "CRAWLGUARD_PROXY": PROXY,
        "DOWNLOAD_VERIFY_CERTIFICATES": True,
    }

    async def start(self):
        yield scrapy.Request(URL)

    def parse(self, response):
        print(response.status, response.headers.get("X-Crawlguard-Decision", b"").decode())
        yield {"url": response.url, "status": response.status}
        yield from response.follow_all(css="a::attr(href)")  # same site: the offsite filter
