"""The document-chat page: upload endpoint (TXT, Markdown, PDF; refusal and middle truncation) and a real
headless Chromium that loads the page, uploads a file, asks, and sees the streamed answer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import SESSION_LEN

CHROMIUM = "/usr/bin/chromium"
DOC = "the old man said that the house was near the water . the pass key is good . remember it ."
SCREENSHOT_DIR = Path(os.environ.get("LMX_TEST_OUTPUT", Path(__file__).resolve().parents[2] / "build" / "test-output"))


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` in Helvetica, with a correct xref table (no PDF-writing dependency)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@pytest.fixture(scope="module")
def base_url(server):
    return server[0]


@pytest.mark.parametrize("name, data", [
    ("notes.txt", DOC.encode()), ("notes.md", ("# notes\n\n" + DOC).encode()), ("notes.pdf", minimal_pdf(DOC)),
])  # fmt: skip
def test_upload_extracts_text_and_counts_tokens(base_url, tiny_pipe, name, data):
    r = httpx.post(f"{base_url}/v1/documents", files={"file": (name, data)}, data={"reserve": "64"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert "pass key is good" in doc["text"]
    assert doc["num_tokens"] == len(tiny_pipe.tokenizer.encode(doc["text"], add_special_tokens=False))
    assert doc["session_len"] == SESSION_LEN and not doc["truncated"]


def test_too_long_document_is_refused_or_middle_truncated(base_url, tiny_pipe):
    words = " ".join(f"w{i % 300}" for i in range(400))
    text = "first word here . " + words + " . end word here"
    r = httpx.post(f"{base_url}/v1/documents", files={"file": ("long.txt", text.encode())}, data={"reserve": "56"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "document_too_long" and "middle truncation" in error["message"]
    r = httpx.post(f"{base_url}/v1/documents", files={"file": ("long.txt", text.encode())},
                   data={"reserve": "56", "truncate": "true"})  # fmt: skip
    doc = r.json()
    assert doc["truncated"] and doc["kept_tokens"] == SESSION_LEN - 56 < doc["num_tokens"]
    assert doc["text"].startswith("first word here") and doc["text"].endswith("end word here")


def test_unsupported_or_broken_files_are_refused(base_url):
    r = httpx.post(f"{base_url}/v1/documents", files={"file": ("x.docx", b"PK..")})
    assert r.status_code == 400 and ".pdf" in r.json()["error"]["message"]
    r = httpx.post(f"{base_url}/v1/documents", files={"file": ("x.pdf", b"not a pdf")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = httpx.post(f"{base_url}/v1/documents", data={"reserve": "5"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"


def test_page_and_assets_are_served_locally(base_url):
    page = httpx.get(f"{base_url}/")
    assert page.status_code == 200 and "Chat with a document" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: every asset comes from this server
    for asset in ("/static/app.js", "/static/style.css"):
        assert httpx.get(f"{base_url}{asset}").status_code == 200


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install -y chromium)")
def test_document_chat_in_headless_chromium(base_url, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    document = tmp_path / "story.txt"
    document.write_text(DOC)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    screenshot = SCREENSHOT_DIR / "doc_chat.png"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.goto(base_url + "/")
            page.wait_for_function("document.getElementById('model-info').textContent.includes('session length')")
            assert page.input_value("#temperature") == "0.05" and page.input_value("#repetition-penalty") == "1.02"
            page.fill("#max-tokens", "12")
            page.set_input_files("#file", str(document))
            page.wait_for_function("document.getElementById('doc-status').textContent.includes('tokens of')")
            status = page.text_content("#doc-status")
            assert f"of {SESSION_LEN}" in status and "story.txt" in status
            page.fill("#question", "what is the pass key ?")
            page.click("#ask")
            page.wait_for_function("document.getElementById('chat-status').textContent === 'Done.'", timeout=60000)
            answer = page.text_content(".message.assistant")
            assert answer and answer.strip()
            assert page.text_content(".message.user") == "what is the pass key ?"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 0
    shutil.copy(screenshot, tmp_path / "doc_chat.png")
    print(f"screenshot: {screenshot}")
