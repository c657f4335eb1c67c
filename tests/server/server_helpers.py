"""Shared by the server tests: a tiny random Llama with a local word-level tokenizer, and a live server.

The model comes from the engine tests' ``make_tiny_model`` (imported, not copied); the tokenizer is built here
with ``tokenizers`` (a word-level vocabulary that fits the model's 512 ids) and a small chat template.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_helpers import VOCAB, make_tiny_model  # noqa: E402

SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "system user assistant the a an of to and in is it that was for on are with as his they be at one have this "
    "from or had by word but what some we can out other were all there when up use your how said each she which do "
    "their time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down side "
    "been now find any new work part take get place made live where after back little only round man year came show "
    "every good me give our under name very through just form sentence great think say help low line differ turn "
    "cause much mean before move right boy old too same tell does set three want air well also play small end put "
    "home read hand port large spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build self earth father document pass "
    "key remember question answer . , ? !"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def make_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIAL + WORDS + [f"w{i}" for i in range(VOCAB - len(SPECIAL) - len(WORDS))]
    assert len(words) == VOCAB and len(set(words)) == VOCAB
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    tokenizer.save_pretrained(directory)
    return tokenizer


def make_tiny_chat_model(directory: Path) -> Path:
    """A tiny random Llama (vocab 512, 64 trained positions) plus tokenizer and chat template in ``directory``."""
    make_tiny_model(directory, arch="llama", rope="default", max_position_embeddings=2048)
    make_tokenizer(directory)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app, port: int | None = None):
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread of this process; yields the base URL; stops it."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_until_healthy(proc, url: str, timeout: float = 120, interval: float = 0.2) -> None:
    """Wait until the server process ``proc`` answers 200 on ``url``/health; fail with its output if it exits first,
    or after ``timeout`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=max(1.0, interval * 5)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the server at {url} did not start within {timeout} s"
        time.sleep(interval)
