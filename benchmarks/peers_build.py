"""The peers' model: a Llama matched to the shipped LANTERN model, and its conversions.

Built with library code only, nothing downloaded:

- a SentencePiece-style BPE tokenizer (byte fallback, "▁" word marks, the Llama-2 layout that
  llama.cpp's converter accepts without a known pre-tokenizer hash) trained with `tokenizers`
  on this repository's own text;
- a `transformers` LlamaForCausalLM with random weights and the shipped model's cost per token:
  4 layers (= 2 shared blocks x steps_base 2 block passes), hidden 256, 4 heads, SwiGLU 768,
  vocabulary 4096;
- onnxruntime-genai models from its model builder (fp32, int8, int4; CPU);
- GGUF files (f32, q8_0) from llama.cpp's `convert_hf_to_gguf.py`.

Each conversion runs in a subprocess and returns an error string instead of raising, so one
peer that cannot be built gives one row that says why. Needs the `peers` extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(vocab_size=4096, hidden_size=256, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=768, num_hidden_layers=4)
SPECIALS = ["<unk>", "<s>", "</s>"]              # ids 0, 1, 2 as in Llama
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]     # byte fallback, llama.cpp needs <0x0A>
GENAI_PRECISIONS = ("fp32", "int8", "int4")
GGUF_TYPES = ("f32", "q8_0")


def _training_text() -> list[str]:
    """This repository's Python and Markdown files: real code and prose, no download."""
    files = sorted(p for pattern in ("**/*.py", "**/*.md") for p in REPO.glob(pattern)
                   if ".venv" not in p.parts and "fixtures" not in p.parts)
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def build_tokenizer(out: Path):
    """Train the Llama-2-layout BPE and save it with transformers (tokenizer.json + config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                           decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=SHAPE["vocab_size"],
                                  special_tokens=SPECIALS + BYTE_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(_training_text(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)
    return fast


def build_llama(out: Path, seed: int = 0) -> Path:
    """Random-weight LlamaForCausalLM of the matched shape, saved with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    fast = build_tokenizer(out)
    torch.manual_seed(seed)
    config = LlamaConfig(**SHAPE, max_position_embeddings=2048, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id, torch_dtype="float32")
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    return out


def _run(command: list[str], cwd: Path, what: str) -> str | None:
    """Run a converter; None on success, else the last line of its output."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
    return f"{what} failed: {lines[-1][:200]}"


def build_genai(hf_dir: Path, out: Path, precision: str) -> str | None:
    """onnxruntime-genai's model builder, CPU target. None on success, else why not."""
    if (out / "genai_config.json").exists():
        return None
    try:
        import onnxruntime_genai  # noqa: F401  (only: is it installed)
    except ImportError as e:
        return f"onnxruntime-genai not importable ({e}): pip install onnxruntime-genai"
    return _run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(hf_dir),
                 "-i", str(hf_dir), "-o", str(out), "-p", precision, "-e", "cpu",
                 "-c", str(out.parent / "genai_cache")], out.parent, "onnxruntime-genai builder")


def find_gguf_converter(explicit: str | None) -> Path | None:
    """llama.cpp's convert_hf_to_gguf.py: --gguf-converter, $LLAMA_CPP_CONVERTER, or a
    llama-cpp-python source tree next to the installed package (pip wheels do not ship it)."""
    for candidate in (explicit, os.environ.get("LLAMA_CPP_CONVERTER")):
        if candidate:
            return Path(candidate)
    try:
        import llama_cpp
    except ImportError:
        return None
    found = Path(llama_cpp.__file__).parent / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    return found if found.exists() else None


def build_gguf(hf_dir: Path, out: Path, outtype: str, converter: Path | None) -> str | None:
    """GGUF through llama.cpp's own converter. None on success, else why not."""
    if out.exists():
        return None
    if converter is None or not converter.exists():
        return ("no GGUF converter: pass --gguf-converter .../vendor/llama.cpp/convert_hf_to_gguf.py "
                "from the llama-cpp-python source (pip download --no-binary :all: llama-cpp-python)")
    return _run([sys.executable, str(converter), str(hf_dir), "--outtype", outtype,
                 "--outfile", str(out)], converter.parent, "convert_hf_to_gguf.py")


def prepare(work: Path, converter: str | None) -> dict:
    """Build everything under work; returns {"hf": dir, "genai": {p: dir|error},
    "gguf": {t: file|error}, "prompt_text": str} and writes it to work/prepared.json."""
    hf_dir = build_llama(work / "hf")
    genai, gguf = {}, {}
    for precision in GENAI_PRECISIONS:
        target = work / f"genai-{precision}"
        error = build_genai(hf_dir, target, precision)
        genai[precision] = {"error": error} if error else {"path": str(target)}
    found = find_gguf_converter(converter)
    for outtype in GGUF_TYPES:
        target = work / f"model-{outtype}.gguf"
        error = build_gguf(hf_dir, target, outtype, found)
        gguf[outtype] = {"error": error} if error else {"path": str(target)}
    prepared = dict(hf=str(hf_dir), genai=genai, gguf=gguf)
    (work / "prepared.json").write_text(json.dumps(prepared, indent=1))
    return prepared


if __name__ == "__main__":           # python benchmarks/peers_build.py WORK [CONVERTER]
    print(json.dumps(prepare(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)))
