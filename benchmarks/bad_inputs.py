"""Bad inputs across every command: exit code, the error line, and whether anything was left behind.

    python benchmarks/bad_inputs.py [--out table.md] [--jobs 2] [--only SUBSTRING]

Builds tiny fixtures in a scratch folder (two random Llama folders with a byte-level tokenizer,
preference and prompt files, a real `score` output, a real `generate` output, a 2-step training
run), then runs each case as `python -m jaxalign.cli.main ...` in its own folder and prints a
Markdown table: exit code, the first line of stderr (the one-line error), whether a Python
traceback appeared, and every file created, changed or deleted under the case folder and the
shared fixtures (the 'left behind' column; '-' = nothing). A case's read-only folder is a
read-only tmpfs mount when this runs as root (root ignores permission bits), else a chmod 555
folder. `tests/cli/test_errors.py` runs the same cases in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Case:
    command: str  # the jaxalign subcommand (table column)
    what: str  # the bad input, in words
    argv: Callable[[Path, Path], list[str]]  # (fixtures, case dir) -> arguments after `jaxalign`
    setup: Callable[[Path, Path], None] | None = None  # prepares the case folder
    expect: int = 2
    read_only_dir: bool = False  # the case folder's `ro/` is made read-only (needs a non-root user)
    lock: str | None = None  # path (relative to the case dir) held locked by another process while the case runs
    pipe_to_head: bool = False  # stdout goes to `head -n 1`

    @property
    def needs_derived(self) -> bool:
        """Reads the fixtures made by real score/generate/train runs (``make_fixtures(derived=True)``)."""
        return self.setup is _copy_run or getattr(self.setup, "derived", False)


# ----------------------------------------------------------------------------- fixtures


def _byte_tokenizer():
    """A byte-level BPE tokenizer with no merges and a chat template (as the tests use)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>"])
    fast.chat_template = ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}"
                          "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    return fast


def _prefs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8)))  # noqa: E731
    return [{"prompt": " ".join(word() for _ in range(3)) + "?", "chosen": " good " + word(), "rejected": " bad " + word()}
            for _ in range(n)]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _model(path: Path, layers: int, seed: int, head: str = "lm") -> Path:
    from jaxalign.config.presets import preset_hf_config
    from jaxalign.models import ModelConfig, init_model, save_pretrained

    hf = {**preset_hf_config("tiny"), "num_hidden_layers": layers}
    save_pretrained(init_model(ModelConfig.from_hf_dict(hf), seed=seed, head=head), _byte_tokenizer(), path)
    return path


def _copy_model(src: Path, dst: Path, *, tokenizer: bool = True) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if tokenizer or not p.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(p, dst / p.name)
    return dst


def train_args(fx: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(REPO / "configs" / "tiny_dpo.yaml"), f"data.path={fx / 'prefs.jsonl'}", f"model.tokenizer={fx / 'tok'}",
            f"train.output_dir={out}", "data.max_length=64", "data.max_prompt_length=32", "data.buckets=[64]",
            "data.batch_size=4", "train.steps=2", "mesh.data=1", *extra]


def stage_args(fx: Path, command: str, *extra: str) -> list[str]:
    return [command, f"model.path={fx / 'student'}", f"teacher.path={fx / 'teacher'}", "data.max_length=64",
            "data.max_prompt_length=40", "data.buckets=[64]", "data.batch_size=4", "generate.max_new_tokens=8",
            "generate.batch_size=4", "eval.max_new_tokens=8", "mesh.data=1", "logging.progress_bar=false", *extra]


def make_fixtures(fx: Path, *, derived: bool = True) -> None:
    """Everything the cases read. ``derived``: also a real score output, generate output and training run
    (each made by the CLI, so the provenance records are the real ones)."""
    fx.mkdir(parents=True, exist_ok=True)
    _model(fx / "teacher", 3, seed=1)
    _model(fx / "student", 2, seed=2)
    _byte_tokenizer().save_pretrained(fx / "tok")
    _jsonl(fx / "prefs.jsonl", _prefs(16, 0))
    _jsonl(fx / "prompts.jsonl", [{"prompt": f"question {i}: what is {i} plus {i}?"} for i in range(4)])
    long = _prefs(8, 1)
    long[5]["chosen"] = " good " + "x" * 600
    _jsonl(fx / "long.jsonl", long)
    _jsonl(fx / "few.jsonl", _prefs(3, 2))
    (fx / "malformed.jsonl").write_text(json.dumps(_prefs(1, 3)[0]) + "\n{\"prompt\": \"x\", \"chosen\": \n")
    _jsonl(fx / "no_rejected.jsonl", [{k: v for k, v in r.items() if k != "rejected"} for r in _prefs(8, 4)])
    _jsonl(fx / "long_prompt.jsonl", [{"prompt": "x" * 600}])
    (fx / "empty_prompts.jsonl").write_text("")
    big = _byte_tokenizer()
    big.add_tokens([f"<x{i}>" for i in range(80)])  # ids past the tiny models' 320
    big.save_pretrained(fx / "big_tok")
    rows = _prefs(8, 5)
    rows[3]["rejected"] = " bad <x70>"
    _jsonl(fx / "big_ids.jsonl", rows)
    (fx / "a_file").write_text("not a folder\n")
    (fx / "bad_recipe.yaml").write_text("loss: {name: dpo\n")
    (fx / "no_stages.yaml").write_text("model: {preset: tiny}\n")

    bad_json = _copy_model(fx / "student", fx / "bad_json_model")
    (bad_json / "config.json").write_text("{not json")
    bad_header = _copy_model(fx / "student", fx / "bad_header_model")
    header = b"[1, 2, 3]"
    (bad_header / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    escape = _copy_model(fx / "student", fx / "escape_model")
    names = json.loads(subprocess.run([sys.executable, "-c", (
        "import json,sys; from safetensors import safe_open; f=safe_open(sys.argv[1],'np'); print(json.dumps(list(f.keys())))"),
        str(escape / "model.safetensors")], capture_output=True, text=True, check=True).stdout)
    (escape / "model.safetensors").unlink()
    (escape / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: "../teacher/model.safetensors" for n in names}}))
    _copy_model(fx / "student", fx / "no_tok_model", tokenizer=False)
    evil = _copy_model(fx / "student", fx / "evil_template_model")
    cfg = json.loads((evil / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ messages[0]['content'] }}"
    (evil / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in ("chat_template.jinja", "chat_template.json"):
        (evil / extra).unlink(missing_ok=True)
    if derived:
        env = _env(fx)
        for argv in (stage_args(fx, "score", f"score.input={fx / 'prefs.jsonl'}", f"score.output={fx / 'scored.jsonl'}"),
                     stage_args(fx, "generate", f"generate.prompts={fx / 'prompts.jsonl'}",
                                f"generate.output={fx / 'generated.jsonl'}"),
                     train_args(fx, fx / "run2")):
            r = subprocess.run([sys.executable, "-m", "jaxalign.cli.main", *argv], cwd=REPO, env=env,
                               capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"fixture run failed: {' '.join(argv[:1])}\n{r.stderr[-2000:]}")


def _env(fx: Path) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "JAXALIGN_CACHE": str(fx / "cache"),
            "PYTHONPATH": str(REPO), "HOME": str(fx / "home")}


def _copy(name: str, *, provenance: bool = True):
    def setup(fx: Path, case: Path) -> None:
        shutil.copy(fx / name, case / name)
        if provenance and (fx / f"{name}.provenance.json").exists():
            shutil.copy(fx / f"{name}.provenance.json", case / f"{name}.provenance.json")
    setup.derived = True
    return setup


def _copy_run(fx: Path, case: Path) -> None:
    shutil.copytree(fx / "run2", case / "run")


def _hf_with_user_file(fx: Path, case: Path) -> None:
    (case / "run" / "hf").mkdir(parents=True)
    (case / "run" / "hf" / "notes.txt").write_text("mine\n")


def _own_model(fx: Path, case: Path) -> None:
    _copy_model(fx / "student", case / "m")


# ----------------------------------------------------------------------------- cases

CASES: list[Case] = [
    # train
    Case("train", "unknown config key", lambda fx, c: train_args(fx, c / "run", "loss.betta=0.2")),
    Case("train", "value of the wrong type", lambda fx, c: train_args(fx, c / "run", "train.steps=abc")),
    Case("train", "value outside its choices", lambda fx, c: train_args(fx, c / "run", "loss.name=dpoo")),
    Case("train", "recipe file does not exist", lambda fx, c: ["train", str(c / "nope.yaml")]),
    Case("train", "recipe is not valid YAML", lambda fx, c: ["train", str(fx / "bad_recipe.yaml")]),
    Case("train", "data.path does not exist", lambda fx, c: train_args(fx, c / "run", f"data.path={fx / 'missing.jsonl'}")),
    Case("train", "malformed JSONL line", lambda fx, c: train_args(fx, c / "run", f"data.path={fx / 'malformed.jsonl'}")),
    Case("train", "rows without a 'rejected' field", lambda fx, c: train_args(fx, c / "run", f"data.path={fx / 'no_rejected.jsonl'}")),
    Case("train", "row longer than the model's context", lambda fx, c: train_args(
        fx, c / "run", f"data.path={fx / 'long.jsonl'}", "data.max_length=1024", "data.max_prompt_length=64", "data.buckets=null")),
    Case("train", "token ids beyond the model's vocabulary", lambda fx, c: train_args(
        fx, c / "run", f"data.path={fx / 'big_ids.jsonl'}", f"model.tokenizer={fx / 'big_tok'}")),
    Case("train", "dataset smaller than one batch", lambda fx, c: train_args(fx, c / "run", f"data.path={fx / 'few.jsonl'}")),
    Case("train", "batch not divisible by the mesh", lambda fx, c: train_args(fx, c / "run", "data.batch_size=6", "mesh.data=4")),
    Case("train", "train.output_dir is a file", lambda fx, c: train_args(fx, fx / "a_file")),
    Case("train", "train.output_dir in a read-only folder", lambda fx, c: train_args(fx, c / "ro" / "run"), read_only_dir=True),
    Case("train", "output dir held by another live run", lambda fx, c: train_args(fx, c / "run"), lock="run/"),
    Case("train", "resume with another loss.beta", lambda fx, c: train_args(fx, c / "run", "loss.beta=0.3"), setup=_copy_run),
    Case("train", "resume with 100x the learning rate", lambda fx, c: train_args(fx, c / "run", "optimizer.lr=0.01"),
         setup=_copy_run),
    Case("train", "cached log-probs made with data.max_length=64, trained at 128", lambda fx, c: train_args(
        fx, c / "run", f"data.path={c / 'scored.jsonl'}", "data.max_length=128", "data.buckets=[128]",
        "data.max_prompt_length=40"), setup=_copy("scored.jsonl")),
    Case("train", "hf/ export folder holds a user file", lambda fx, c: train_args(fx, c / "run", "train.export_hf=true"),
         setup=_hf_with_user_file),
    Case("train", "model config.json is not JSON", lambda fx, c: train_args(
        fx, c / "run", "model.preset=", f"model.path={fx / 'bad_json_model'}")),
    Case("train", "safetensors header is not an object", lambda fx, c: train_args(
        fx, c / "run", "model.preset=", f"model.path={fx / 'bad_header_model'}")),
    Case("train", "safetensors index names a file outside the folder", lambda fx, c: train_args(
        fx, c / "run", "model.preset=", f"model.path={fx / 'escape_model'}")),
    Case("train", "`--help-config | head -n 1` (reader closes the pipe)", lambda fx, c: ["train", "--help-config"],
         expect=0, pipe_to_head=True),
    # generate
    Case("generate", "generate.output not set", lambda fx, c: stage_args(fx, "generate", f"generate.prompts={fx / 'prompts.jsonl'}")),
    Case("generate", "prompt file does not exist", lambda fx, c: stage_args(
        fx, "generate", f"generate.prompts={fx / 'nope.jsonl'}", f"generate.output={c / 'o.jsonl'}")),
    Case("generate", "empty prompt file", lambda fx, c: stage_args(
        fx, "generate", f"generate.prompts={fx / 'empty_prompts.jsonl'}", f"generate.output={c / 'o.jsonl'}")),
    Case("generate", "prompt longer than the context", lambda fx, c: stage_args(
        fx, "generate", f"generate.prompts={fx / 'long_prompt.jsonl'}", f"generate.output={c / 'o.jsonl'}")),
    Case("generate", "generate.output is a folder", lambda fx, c: stage_args(
        fx, "generate", f"generate.prompts={fx / 'prompts.jsonl'}", f"generate.output={c}")),
    Case("generate", "generate.output with a .txt suffix", lambda fx, c: stage_args(
        fx, "generate", f"generate.prompts={fx / 'prompts.jsonl'}", f"generate.output={c / 'o.txt'}")),
    Case("generate", "generate.output in a read-only folder", lambda fx, c: stage_args(
        fx, "generate", f"generate.prompts={fx / 'prompts.jsonl'}", f"generate.output={c / 'ro' / 'o.jsonl'}"),
        read_only_dir=True),
    Case("generate", "output held by another live run", lambda fx, c: stage_args(
        fx, "generate", f"generate.prompts={fx / 'prompts.jsonl'}", f"generate.output={c / 'o.jsonl'}"), lock="o.jsonl"),
    Case("generate", "rerun into an output sampled at another temperature", lambda fx, c: stage_args(
        fx, "generate", f"generate.prompts={fx / 'prompts.jsonl'}", f"generate.output={c / 'generated.jsonl'}",
        "generate.temperature=1.0"), setup=_copy("generated.jsonl")),
    Case("generate", "rerun into an output without a provenance record", lambda fx, c: stage_args(
        fx, "generate", f"generate.prompts={fx / 'prompts.jsonl'}", f"generate.output={c / 'generated.jsonl'}"),
        setup=_copy("generated.jsonl", provenance=False)),
    Case("generate", "model folder without a tokenizer", lambda fx, c: stage_args(
        fx, "generate", f"model.path={fx / 'no_tok_model'}", f"generate.prompts={fx / 'prompts.jsonl'}",
        f"generate.output={c / 'o.jsonl'}")),
    Case("generate", "chat template the sandbox refuses", lambda fx, c: stage_args(
        fx, "generate", f"model.path={fx / 'evil_template_model'}", f"generate.prompts={fx / 'prompts.jsonl'}",
        f"generate.output={c / 'o.jsonl'}")),
    # score
    Case("score", "score.output not set", lambda fx, c: stage_args(fx, "score", f"score.input={fx / 'prefs.jsonl'}")),
    Case("score", "nothing to score", lambda fx, c: stage_args(
        fx, "score", f"score.input={fx / 'prefs.jsonl'}", f"score.output={c / 's.jsonl'}", "score.reference_logps=false")),
    Case("score", "input rows without 'rejected'", lambda fx, c: stage_args(
        fx, "score", f"score.input={fx / 'no_rejected.jsonl'}", f"score.output={c / 's.jsonl'}")),
    Case("score", "score.output in a read-only folder", lambda fx, c: stage_args(
        fx, "score", f"score.input={fx / 'prefs.jsonl'}", f"score.output={c / 'ro' / 's.jsonl'}"), read_only_dir=True),
    Case("score", "rescore into an output made with another max_prompt_length", lambda fx, c: stage_args(
        fx, "score", f"score.input={fx / 'prefs.jsonl'}", f"score.output={c / 'scored.jsonl'}", "data.max_prompt_length=30"),
        setup=_copy("scored.jsonl")),
    # eval
    Case("eval", "nothing to evaluate", lambda fx, c: stage_args(fx, "eval", f"eval.output={c / 'e.json'}")),
    Case("eval", "eval.output in a read-only folder", lambda fx, c: stage_args(
        fx, "eval", f"eval.prompts={fx / 'prompts.jsonl'}", f"eval.output={c / 'ro' / 'e.json'}"), read_only_dir=True),
    Case("eval", "judge is a plain language model", lambda fx, c: stage_args(
        fx, "eval", f"eval.prompts={fx / 'prompts.jsonl'}", f"eval.judge.path={fx / 'student'}", f"eval.output={c / 'e.json'}")),
    Case("eval", "judge is a random preset", lambda fx, c: stage_args(
        fx, "eval", f"eval.prompts={fx / 'prompts.jsonl'}", "eval.judge.preset=tiny", f"eval.output={c / 'e.json'}")),
    # convert
    Case("convert", "source does not exist", lambda fx, c: ["convert", str(fx / "nope"), str(c / "out")]),
    Case("convert", "GGUF file does not exist", lambda fx, c: ["convert", str(fx / "nope.gguf"), str(c / "out")]),
    Case("convert", "out_dir is a file", lambda fx, c: ["convert", str(fx / "student"), str(fx / "a_file")]),
    Case("convert", "out_dir exists, no --overwrite", lambda fx, c: ["convert", str(fx / "student"), str(fx / "teacher")]),
    Case("convert", "--overwrite into its own source", lambda fx, c: ["convert", str(c / "m"), str(c / "m"), "--overwrite"],
         setup=_own_model),
    Case("convert", "out_dir in a read-only folder", lambda fx, c: ["convert", str(fx / "student"), str(c / "ro" / "out")],
         read_only_dir=True),
    # prune
    Case("prune", "--overwrite into its own source", lambda fx, c: ["prune", str(c / "m"), str(c / "m"), "--fraction", "0.3",
                                                                   "--overwrite"], setup=_own_model),
    Case("prune", "--layers that are not numbers", lambda fx, c: ["prune", str(fx / "teacher"), str(c / "out"), "--layers", "a,b"]),
    Case("prune", "source whose index escapes its folder", lambda fx, c: ["prune", str(fx / "escape_model"), str(c / "out"),
                                                                         "--fraction", "0.3"]),
    # pipeline, top level
    Case("pipeline", "recipe without stages", lambda fx, c: ["pipeline", str(fx / "no_stages.yaml")]),
    Case("pipeline", "unknown config key", lambda fx, c: ["pipeline", "loss.betta=0.2"]),
    Case("jaxalign", "unknown command", lambda fx, c: ["trian"]),
]


# ----------------------------------------------------------------------------- running


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file under ``roots`` (the GGUF/jit caches excluded)."""
    out = {}
    for root in roots:
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in ("cache", "home", "__pycache__")]
            for name in files + [d + "/" for d in dirnames]:
                p = Path(dirpath) / name.rstrip("/")
                with contextlib.suppress(OSError):
                    st = p.lstat()
                    out[str(p) + ("/" if name.endswith("/") else "")] = (0 if name.endswith("/") else st.st_size,
                                                                          0 if name.endswith("/") else st.st_mtime_ns)
    return out


def left_behind(before: dict, after: dict, base: Path) -> str:
    changed = sorted({p for p in set(before) | set(after) if before.get(p) != after.get(p)})
    return ", ".join(os.path.relpath(p.rstrip("/"), base) + ("/" if p.endswith("/") else "") for p in changed) or "-"


@contextlib.contextmanager
def read_only_folder(path: Path):
    """``path`` as a folder nobody can write to: a read-only tmpfs mount for root, else mode 555."""
    path.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=False)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


@contextlib.contextmanager
def _held_lock(case_dir: Path, lock: str | None):
    """Another live process holding the output lock (a child that locks and waits)."""
    if lock is None:
        yield
        return
    directory = lock.endswith("/")
    target = case_dir / lock.rstrip("/")
    code = ("import sys, time; from jaxalign.train.locks import output_lock\n"
            f"with output_lock({str(target)!r}, key='x', directory={directory}):\n"
            "    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        yield
    finally:
        holder.kill()
        holder.wait()
        # the holder was killed: its lock file stays, unlocked (a stale lock the next run takes over)
        from jaxalign.train.locks import lock_path

        lock_path(target, directory=directory).unlink(missing_ok=True)
        if directory and target.is_dir() and not any(target.iterdir()):
            target.rmdir()


def run_case(case: Case, fx: Path, case_dir: Path) -> dict:
    case_dir.mkdir(parents=True)
    if case.setup:
        case.setup(fx, case_dir)
    argv = case.argv(fx, case_dir)
    cmd = [sys.executable, "-m", "jaxalign.cli.main", *argv]
    with (read_only_folder(case_dir / "ro") if case.read_only_dir else contextlib.nullcontext()):
        before = snapshot(fx, case_dir)
        with _held_lock(case_dir, case.lock):
            if case.pipe_to_head:
                proc = subprocess.run(" ".join(map(_quote, cmd)) + " | head -n 1", shell=True, cwd=REPO, env=_env(fx),
                                      capture_output=True, text=True, executable="/bin/bash")
            else:
                proc = subprocess.run(cmd, cwd=REPO, env=_env(fx), capture_output=True, text=True)
        after = snapshot(fx, case_dir)
    err = [line for line in proc.stderr.splitlines() if line.startswith(("jaxalign", "usage:", "Traceback"))
           or ": error:" in line]
    message = next((line for line in err if ": error:" in line or line.startswith("Traceback")), "")
    if not message and proc.returncode == 0:
        message = (proc.stdout.strip().splitlines() or [""])[0]
    return {"command": case.command, "what": case.what, "exit": proc.returncode, "expected": case.expect,
            "message": message, "traceback": "Traceback" in proc.stderr,
            "left_behind": left_behind(before, after, fx.parent)}


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def table(results: list[dict]) -> str:
    lines = ["| # | command | bad input | exit | traceback | left behind | message |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        msg = r["message"].replace("|", "\\|")
        lines.append(f"| {i} | {r['command']} | {r['what']} | {r['exit']} | {'yes' if r['traceback'] else 'no'} | "
                     f"{r['left_behind']} | {msg} |")
    ok = sum(r["exit"] == r["expected"] and not r["traceback"] and r["left_behind"] == "-" for r in results)
    lines += ["", f"{ok} of {len(results)} cases: expected exit code, no traceback, nothing left behind."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="run only cases whose description contains this")
    ap.add_argument("--no-derived", action="store_true",
                    help="skip the fixtures made by real score/generate/train runs and the cases that need them")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="jaxalign_bad_inputs_"))
    t0 = time.perf_counter()
    fx = scratch / "fx"
    make_fixtures(fx, derived=not args.no_derived)
    print(f"fixtures ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cases = [c for c in CASES if args.only in c.what and not (args.no_derived and c.needs_derived)]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda ic: run_case(ic[1], fx, scratch / f"case{ic[0]:02d}"), enumerate(cases, 1)))
    text = table(results)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(f"{len(cases)} cases in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(r["exit"] == r["expected"] and not r["traceback"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
