"""Open a page through crawlguard with Playwright driving Debian's Chromium, verifying
crawlguard's certificates and sending a descriptive user agent (docs/crawlers/playwright.md)."""

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import sync_playwright

PROXY = os.environ.get("CRAWLGUARD_PROXY", "http://demo:demo-token@127.0.0.1:8080")
CA = os.environ.get("CRAWLGUARD_CA", "crawlguard-ca.pem")  # crawlguard ca --export PATH
URL = os.environ.get("CRAWLGUARD_URL", "https://site.example/")
CHROMIUM = os.environ.get("CRAWLGUARD_CHROMIUM", "/usr/bin/chromium")
# "nss": add the CA to an NSS database (needs certutil: apt-get install libnss3-tools);
# "spki": accept certificate chains that carry the CA's key; "none": trust nothing extra.
TRUST = os.environ.get("CRAWLGUARD_TRUST", "nss" if shutil.which("certutil") else "spki")


def trust_crawlguard(home: Path) -> list[str]:
    """Chromium reads no CA file. It trusts the NSS database $HOME/.pki/nssdb, and it takes
    --ignore-certificate-errors-spki-list (hashes of public keys); the Chromium flags to use."""
    if TRUST == "nss":
        db = home / ".pki" / "nssdb"
        db.mkdir(parents=True)
        subprocess.run(["certutil", "-d", f"sql:{db}", "-N", "--empty-password"], check=True)
        subprocess.run(
            ["certutil", "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", "crawlguard", "-i", CA],
            check=True,
        )
        return []
    if TRUST == "spki":  # crawlguard sends its CA certificate with every site certificate
        ca = x509.load_pem_x509_certificate(Path(CA).read_bytes())
        spki = ca.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        digest = base64.b64encode(hashlib.sha256(spki).digest()).decode()
        return [f"--ignore-certificate-errors-spki-list={digest}"]
    return []


proxy = urlsplit(PROXY)
with tempfile.TemporaryDirectory() as home, sync_playwright() as pw:
    browser = pw.chromium.launch(
        executable_path=CHROMIUM,  # Debian's Chromium: Playwright downloads no browser
        args=trust_crawlguard(Path(home)),
        env={**os.environ, "HOME": home},  # a private NSS database, not the user's
        proxy={
            "server": f"{proxy.scheme}://{proxy.hostname}:{proxy.port}",
            "username": proxy.username or "",
            "password": proxy.password or "",
        },
    )
    # Chromium's own user agent says HeadlessChrome: refused as ua-generic.
    context = browser.new_context(
        user_agent="Mozilla/5.0 (compatible; DemoBot/1.0; +https://demo.example/bot)",
        ignore_https_errors=False,
    )
    response = context.new_page().goto(URL)
    assert response is not None
    decision = response.headers.get("x-crawlguard-decision")
    print(response.status, decision)
    if decision != "allowed":
        print(response.text())  # crawlguard's explanation: the rule broken and how to comply
    browser.close()
