"""One peer configuration in a process of its own: `python benchmarks/peers_worker.py < job.json`.

The job names a system (lantern, genai, llamacpp, transformers), its model, the intra-op
thread count and the new-token counts; the worker loads the model once, runs one short
untimed generation, then one timed greedy generation per token count, EOS ignored, and prints
one JSON line: {"tok_s": {"128": ..., "512": ...}, "version": ...}.

Decode tok/s is measured the same way for every system: (N - 1) / (time the last new token
was decided - time the first was decided), so the prompt's prefill is left out and every
counted interval is one full step (feed the previous token, decide the next).
"""

from __future__ import annotations

import json
import sys
import time

PROMPT_TEXT = ("def read_config(path):\n    \"\"\"Load the settings file and return a dict.\"\"\"\n"
               "    with open(path) as f:\n        return json.load(f)\n")
PROMPT_TOKENS = 16
WARMUP_TOKENS = 16


def _rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _prompt(ids: list[int], bos: int | None) -> list[int]:
    ids = ([bos] if bos is not None and ids[:1] != [bos] else []) + list(ids)
    return (ids * PROMPT_TOKENS)[:PROMPT_TOKENS]


def lantern(job: dict):
    import lantern_edge
    from lantern_edge.benchmark.decode import stream_tok_s

    runtime = lantern_edge.Runtime(precision=job["precision"], intra_op_threads=job["threads"],
                                   providers=["CPUExecutionProvider"])
    prompt = runtime.encode(PROMPT_TEXT).tolist()[:PROMPT_TOKENS]

    def run(n: int) -> float:
        return stream_tok_s(runtime, prompt, n, eos_token_id=None, seed=0,
                            adaptive=job["adaptive"])
    return run, lantern_edge.__version__


def _hf_prompt(job: dict) -> list[int]:
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(f"{job['hf']}/tokenizer.json")
    return _prompt(tokenizer.encode(PROMPT_TEXT, add_special_tokens=False).ids,
                   tokenizer.token_to_id("<s>"))


def genai(job: dict):
    import onnxruntime_genai as og

    config = og.Config(job["path"])
    config.clear_providers()                                  # CPU
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": job["threads"], "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    prompt = _hf_prompt(job)

    def run(n: int) -> float:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + n,
                                  min_length=len(prompt) + n)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        stamps = []
        while not generator.is_done():
            generator.generate_next_token()
            stamps.append(time.perf_counter())
        return _rate(stamps)
    return run, og.__version__


def _without_extra_buffers(llama_cpp) -> None:
    """Model params with use_extra_bufts off: llama.cpp's extra CPU buffer types (weight
    repacking, AMX) crash in the first decode of a q8_0 model on an AMX Xeon (segfault,
    llama-cpp-python 0.3.36 built with GGML_NATIVE); the plain CPU buffers run. The Llama
    class has no argument for it, so its defaults are wrapped."""
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        value = defaults()
        value.use_extra_bufts = False
        return value
    llama_cpp.llama.llama_cpp.llama_model_default_params = params


def llamacpp(job: dict):
    import llama_cpp

    if not job.get("extra_buffers", False):
        _without_extra_buffers(llama_cpp)
    llm = llama_cpp.Llama(job["path"], n_ctx=1024, n_batch=64, n_threads=job["threads"],
                          n_threads_batch=job["threads"], seed=0, verbose=False)
    prompt = _hf_prompt(job)

    def run(n: int) -> float:
        stamps = []
        for _ in llm.generate(prompt, top_k=1, temp=0.0, reset=True):     # greedy, no EOS stop
            stamps.append(time.perf_counter())
            if len(stamps) == n:
                break
        return _rate(stamps)
    return run, llama_cpp.__version__


def transformers_generate(job: dict):
    import torch
    import transformers
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(job["threads"])
    model = transformers.LlamaForCausalLM.from_pretrained(job["hf"], dtype=torch.float32).eval()
    prompt = torch.tensor([_hf_prompt(job)])

    class Stamps(BaseStreamer):
        def __init__(self):
            self.stamps: list[float] = []
            self.prompt_seen = False

        def put(self, value):
            if self.prompt_seen:                              # the first put is the prompt
                self.stamps.append(time.perf_counter())
            self.prompt_seen = True

        def end(self):
            pass

    def run(n: int) -> float:
        streamer = Stamps()
        with torch.inference_mode():
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, streamer=streamer,
                           pad_token_id=model.config.eos_token_id)
        return _rate(streamer.stamps)
    return run, transformers.__version__


SYSTEMS = {"lantern": lantern, "genai": genai, "llamacpp": llamacpp,
           "transformers": transformers_generate}


def main() -> int:
    job = json.loads(sys.stdin.read())
    run, version = SYSTEMS[job["system"]](job)
    run(WARMUP_TOKENS)
    tok_s = {str(n): run(n) for n in job["tokens"]}
    print(json.dumps({"tok_s": tok_s, "version": version}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
