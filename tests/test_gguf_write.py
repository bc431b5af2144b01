"""The GGUF written from a Hugging Face checkpoint (austeer.exports.gguf_write): tiny random llama and qwen2 models
with SmolLM2's real tokenizer (always run), and the real SmolLM2 in llama.cpp (tests/llamacpp.py; skipped without it).

Measured here (float32 HF model, CPU, llama.cpp from xllamacpp 2026.10.11549), SmolLM2 folded with the 8-AU
sentiment spec below, four prompts: the F32 GGUF in llama.cpp gives the folded HF model's logits within max
|diff| 0.013-0.034, mean 0.0016-0.0050 (the steering moves them by 0.49-0.88 on average), and the same 32
greedy tokens on every prompt; F16 max 0.046 / mean 0.011, BF16 max 0.49 / mean 0.093, greedy text still
equal (llama-cpp-python 0.3.36; see docs/SERVING.md).
"""

from __future__ import annotations

import functools
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers as tf

from austeer.cli import main
from austeer.core.momentum import Unit
from austeer.core.spec import SteerSpec, fingerprint
from austeer.core.steer import folded
from austeer.exports.gguf_export import export_gguf
from austeer.exports.gguf_meta import gguf_name
from austeer.exports.gguf_write import export_hf_gguf, rope_permute, rope_unpermute
from austeer.io import OutputExistsError
from austeer.models.loading import gguf_source, save_checkpoint
from tests.conftest import GGUF_PROMPTS, GQA, ByteTok, hf_next
from tests.llamacpp import Llama, llama_greedy, llama_logits

VOCAB = 49152  # SmolLM2's tokenizer, so the tiny models get a real one


@functools.cache
def _tiny(kind: str) -> torch.nn.Module:
    """A tiny random model (made once per session; the tests fold it only inside ``folded``)."""
    torch.manual_seed(0)
    config = {
        # tied embeddings and attention biases: the permuted q/k biases and the missing output tensor
        "llama": lambda: tf.LlamaConfig(**{**GQA, "vocab_size": VOCAB}, tie_word_embeddings=True, attention_bias=True),
        "qwen2": lambda: tf.Qwen2Config(**{**GQA, "vocab_size": VOCAB}, tie_word_embeddings=False),
    }[kind]()
    return tf.AutoModelForCausalLM.from_config(config).eval()


def _spec(model: torch.nn.Module) -> SteerSpec:
    units = [Unit("head", 0, 3, 1.0), Unit("head", 1, 40, -0.5), Unit("ffn", 1, 7, 0.8)]
    return SteerSpec(units=units, alpha=3.0, fingerprint=fingerprint(model))


def _matrix(t) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A GGUF tensor as float32 numpy, rows as HF's (``[out, in]``)."""
    data = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.array(data, dtype=np.float32).reshape(tuple(int(n) for n in reversed(t.shape)))


def _fields(reader: gguf.GGUFReader) -> dict[str, object]:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.fixture(scope="module")
def files(smol, tmp_path_factory) -> dict[str, Path]:
    """The F32 GGUF of each tiny model, folded by its :func:`_spec`."""
    folder = tmp_path_factory.mktemp("hfgguf")
    return {
        kind: export_hf_gguf(_tiny(kind), smol[1], _spec(_tiny(kind)), folder / f"{kind}.gguf")
        for kind in ("llama", "qwen2")
    }


@pytest.fixture(scope="module")
def written(files) -> dict[str, gguf.GGUFReader]:
    """:func:`files`, read back."""
    return {kind: gguf.GGUFReader(path) for kind, path in files.items()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_tensors_and_metadata_are_the_folded_hf_model(kind, written):
    model, reader = _tiny(kind), written[kind]
    spec = _spec(model)
    meta = _fields(reader)
    cfg = model.config
    assert meta["general.architecture"] == kind
    want_meta = {
        "context_length": cfg.max_position_embeddings,
        "embedding_length": 64,
        "block_count": 2,
        "feed_forward_length": 96,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "rope.dimension_count": 16,
        "vocab_size": VOCAB,
    }
    assert {k: meta[f"{kind}.{k}"] for k in want_meta} == want_meta
    assert meta[f"{kind}.rope.freq_base"] == pytest.approx(cfg.rope_parameters["rope_theta"])
    assert meta[f"{kind}.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert len(meta["tokenizer.ggml.tokens"]) == VOCAB  # type: ignore[arg-type]

    by_name = {t.name: t for t in reader.tensors}
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if kind == "llama" else gguf.MODEL_ARCH.QWEN2, 2)
    with folded(model, spec):
        params = dict(model.named_parameters())  # tied: lm_head is not listed, token_embd serves as output
        assert set(by_name) == {gguf_name(name_map, n) for n in params}
        for hf_name, p in params.items():
            t = by_name[gguf_name(name_map, hf_name)]
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
            got = torch.from_numpy(_matrix(t))
            if kind == "llama" and ".q_proj." in hf_name:
                got = rope_unpermute(got, 4)
            elif kind == "llama" and ".k_proj." in hf_name:
                got = rope_unpermute(got, 2)
            assert torch.equal(got, p.detach()), hf_name
    unfolded = model.model.layers[0].self_attn.o_proj.weight.detach()
    assert not torch.equal(torch.from_numpy(_matrix(by_name["blk.0.attn_output.weight"])), unfolded)  # folded
    assert ("output.weight" in by_name) == (kind == "qwen2")  # llama is tied: llama.cpp reuses token_embd
    assert "blk.0.attn_q.bias" in by_name and ("blk.0.attn_output.bias" in by_name) == (kind == "llama")
    q = model.model.layers[0].self_attn.q_proj.weight.detach()
    # the permutation is real (so the llama rows checked above were reordered; qwen2's are HF's own)
    assert not torch.equal(rope_permute(q, 4), q) and torch.equal(rope_unpermute(rope_permute(q, 4), 4), q)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_transformers_gguf_loader_reads_the_written_file_as_the_folded_model(kind, files):
    """transformers' own GGUF loader (``from_pretrained(..., gguf_file=...)``: its names, its undoing of llama's
    Q/K order) reads back the model austeer wrote: the same logits as the folded model, to float32 noise."""
    model, path = _tiny(kind), files[kind]
    ids = torch.tensor([[1, 17, 400, 3000, 49000, 5, 77, 9]])
    reloaded = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad(), folded(model, _spec(model)):
        want = model(ids).logits
    with torch.no_grad():
        got = reloaded(ids).logits
        plain = model(ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    assert not torch.allclose(plain, want, atol=1e-4, rtol=1e-4)  # the fold is in the file, not a no-op


@pytest.mark.slow
def test_the_tokenizer_is_the_original_ggufs(smol, written):
    """SmolLM2's tokenizer written from the HF tokenizer equals what its original GGUF holds: tokens, types,
    merges, special ids, add_bos, space prefix, pre-tokenizer and chat template."""
    source = gguf_source(smol[0])
    assert source is not None
    ours, theirs = _fields(written["llama"]), _fields(gguf.GGUFReader(source))
    keys = [k for k in theirs if k.startswith("tokenizer.")]
    assert len(keys) >= 11
    assert {k: ours.get(k) for k in keys} == {k: theirs[k] for k in keys}


@pytest.mark.slow
def test_dtypes_and_refusals(smol, tmp_path, monkeypatch):
    model, tok = _tiny("qwen2"), smol[1]
    spec = _spec(model)
    for dtype, qtype in [("f16", gguf.GGMLQuantizationType.F16), ("bf16", gguf.GGMLQuantizationType.BF16)]:
        out = export_hf_gguf(model, tok, spec, tmp_path / f"{dtype}.gguf", dtype=dtype)
        tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
        assert {t.tensor_type for t in tensors.values() if len(t.shape) == 2} == {qtype}
        assert {t.tensor_type for t in tensors.values() if len(t.shape) == 1} == {gguf.GGMLQuantizationType.F32}
        w = model.model.layers[1].mlp.up_proj.weight.detach().numpy()
        assert np.abs(_matrix(tensors["blk.1.ffn_up.weight"]) - w).max() <= 1e-2 * np.abs(w).max()
    theirs = tmp_path / "theirs.gguf"
    theirs.write_bytes(b"not mine")
    with pytest.raises(OutputExistsError):
        export_hf_gguf(model, tok, spec, theirs)
    assert theirs.read_bytes() == b"not mine"
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer"):
        export_hf_gguf(model, ByteTok(), spec, tmp_path / "b.gguf")
    with pytest.raises(ValueError, match="ids up to"):
        export_hf_gguf(_tiny_small_vocab(), tok, SteerSpec([Unit("head", 0, 1, 1.0)], 1.0), tmp_path / "v.gguf")
    monkeypatch.setattr("austeer.exports.gguf_write.PRE_TOKENIZERS", {})  # a tokenizer llama.cpp would not recognise
    with pytest.raises(ValueError, match="pre-tokenizer"):
        export_hf_gguf(model, tok, spec, tmp_path / "p.gguf")
    assert not any(p.name.startswith(("b.", "v.", "p.")) for p in tmp_path.iterdir())


def _tiny_small_vocab() -> torch.nn.Module:
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(tf.LlamaConfig(**GQA)).eval()


@pytest.mark.slow
def test_cli_writes_a_checkpoint_model_as_gguf(smol, tmp_path):
    """``export --format gguf`` of a model loaded from a checkpoint directory (no GGUF behind it)."""
    model = _tiny("llama")
    ckpt = save_checkpoint(model, smol[1], tmp_path / "ckpt")
    spec_dir = _spec(model).save(tmp_path / "spec")
    out = tmp_path / "m.gguf"
    args = ["export", "--steer", str(spec_dir), "--model", str(ckpt), "--format", "gguf", "--out", str(out)]
    assert main([*args, "--gguf-dtype", "f16"]) == 0
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    # the library entry point takes the same route when given the tokenizer
    loaded = tf.AutoModelForCausalLM.from_pretrained(ckpt).eval()
    with pytest.raises(ValueError, match="tokenizer="):
        export_gguf(loaded, _spec(model), tmp_path / "x.gguf")
    assert export_gguf(loaded, _spec(model), tmp_path / "x.gguf", tokenizer=smol[1]).is_file()
    # a family the writer does not know: a one-line error (exit 2), nothing written
    torch.manual_seed(0)
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB)).eval()
    ckpt = save_checkpoint(gpt2, smol[1], tmp_path / "gpt2")
    spec_dir = SteerSpec([Unit("head", 0, 1, 1.0)], 1.0, fingerprint=fingerprint(gpt2)).save(tmp_path / "spec2")
    args = ["export", "--steer", str(spec_dir), "--model", str(ckpt), "--format", "gguf", "--out", str(tmp_path / "g")]
    assert main(args) == 2
    assert not (tmp_path / "g").exists()


# -- llama.cpp itself (tests/llamacpp.py), skipped where it is not installed (fails under scripts/test.sh)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_llamacpp_runs_the_tiny_models(kind, files, smol):
    """The tiny llama (RoPE rows permuted, GQA, q/k/v/o biases, tied) and qwen2 (NeoX RoPE, q/k/v biases,
    untied) files in llama.cpp compute the folded HF model: measured max |diff| 1.9-3.4e-4, mean 2.9-4.4e-5
    against a steering effect of 2-3e-2; without the permutation the llama file is off by max 8e-3, mean 1e-3."""
    model, tok = _tiny(kind), smol[1]
    spec = _spec(model)
    llm = Llama(files[kind])
    for prompt in GGUF_PROMPTS:
        ids = tok(prompt).input_ids
        with torch.no_grad(), folded(model, spec):
            want = model(torch.tensor([ids])).logits[0]
        got = llama_logits(llm, ids)
        assert float((got - want).abs().max()) < 1e-3 and float((got - want).abs().mean()) < 1e-4, prompt


@pytest.fixture(scope="module")
def smol_spec(sentiment_fit):
    return sentiment_fit(["head", "ffn"], k=8, alpha=5.0)


@pytest.mark.slow
def test_llamacpp_runs_the_written_gguf_as_the_folded_model(smol, smol_spec, tmp_path):
    """SmolLM2's weights written whole (the HF route; its source GGUF is not used) run in llama.cpp as the
    folded HF model: same prompt tokens, logits within 0.1 (measured max 0.013-0.015), same greedy text."""
    model, tok = smol
    out = export_hf_gguf(model, tok, smol_spec, tmp_path / "smol.gguf")
    llm = Llama(out)
    for prompt in GGUF_PROMPTS:
        ids = tok(prompt).input_ids
        assert llm.tokenize(prompt) == ids
        with torch.no_grad():
            base = model(torch.tensor([ids])).logits[0]
            with folded(model, smol_spec):
                want = model(torch.tensor([ids])).logits[0]
        got = llama_logits(llm, ids)
        effect = float((want - base).abs().mean())
        assert float((got - want).abs().max()) < 0.1, prompt
        assert float((got - want).abs().mean()) < 0.02 * effect, prompt
        text = llama_greedy(llm, ids, 16)
        with folded(model, smol_spec):
            assert hf_next(model, ids, text) == text, prompt  # the folded HF model's greedy text
