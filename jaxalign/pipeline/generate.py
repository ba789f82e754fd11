"""The ``generate`` stage: sample responses to a prompt set with the KV-cache sampler.

``samples`` mode writes one row per prompt with each model's response (dSFT
data: with one model the columns are ``prompt``/``response``); ``pairs`` mode
writes dDPO/daDPO rows, ``chosen`` from the first model (the teacher) and
``rejected`` from the second (the student), naming both. String prompts that
go through the chat template are written as message lists, so training
applies the same template. Rows stream to the output batch by batch; a rerun
(after a crash or SIGTERM) continues where the file ends, and batch ``i``
always samples with the same seed (``batch_seed(seed, i, model)``; each model its own).

Multi-process (``jax.distributed``, e.g. ``launch/local_multiprocess.sh 2 4 jaxalign generate ...``):
each model is sharded over the global mesh; every process reads the same prompts and output, so all
agree on the rows left and the batches; each batch is one global array over the batch axes, each
process feeds its own block of rows and writes the rows it owns to ``<output>.part-P-of-N.jsonl``.
When all rows are done, process 0 folds the parts into the output (prompt order, each prompt once);
an interrupted run leaves its parts, which the next run (any process count) folds in first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import jax
from jinja2.exceptions import TemplateError

from jaxalign.config.schema import Config, GenerateModel, ModelSpec
from jaxalign.data.errors import DataError
from jaxalign.generation.sampler import SamplingParams, encode_prompts, generate_arrays, generate_ids, left_pad
from jaxalign.parallel import distributed
from jaxalign.parallel.mesh import make_mesh
from jaxalign.pipeline.progress import progress
from jaxalign.pipeline.rows import RowWriter, fold_parts, iter_batches, load_prompts, part_path
from jaxalign.train.build import build_model, build_model_config, build_tokenizer
from jaxalign.train.preemption import PreemptionGuard
from jaxalign.train.provenance import write_sidecar

log = logging.getLogger(__name__)

__all__ = ["GenerateResult", "PolicySampler", "generation_models", "run_generate", "uses_chat_template"]


@dataclass
class GenerateResult:
    output: Path
    rows: int  # rows in the output now
    new_rows: int  # rows written by this call
    tokens: int  # new tokens sampled by this call
    seconds: float
    interrupted: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def named(spec: ModelSpec, name: str) -> GenerateModel:
    """``spec`` as a ``GenerateModel`` called ``name`` (its ``ModelSpec`` fields: a policy's training-only
    settings, e.g. ``model.lora``, do not apply to sampling a saved model)."""
    return GenerateModel(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(ModelSpec)}, name=name)


def generation_models(config: Config) -> list[GenerateModel]:
    """``generate.models``, or its defaults: pairs = [teacher, model], samples = [model]."""
    gen = config.generate
    if gen.models:
        return list(gen.models)
    if gen.mode == "pairs":
        return [named(config.teacher, "teacher"), named(config.model, "student")]
    return [named(config.model, "model")]


def uses_chat_template(tokenizer, setting: bool | None, prompt: Any) -> bool:
    """Whether ``prompt`` goes through the chat template (``data.use_chat_template`` semantics,
    except that ``None`` uses the template whenever the tokenizer has one)."""
    if isinstance(prompt, list):
        return True
    if setting is None:
        return bool(getattr(tokenizer, "chat_template", None))
    return setting


class PolicySampler:
    """One model and its tokenizer, ready to sample; prompts are encoded before weights load.

    ``prepare(prompts)`` encodes and checks every prompt against the model's
    context (cheap, so bad prompts fail before the weights load); ``load`` then
    builds the model; ``sample`` returns texts and token counts.
    """

    def __init__(self, spec: GenerateModel, *, key: str, chat_setting: bool | None, max_new_tokens: int,
                 sampling: SamplingParams, add_bos: bool | None = None, bucket: int = 64):
        self.spec, self.key = spec, key
        self.tokenizer = build_tokenizer(spec, key=key)
        self.model_config = build_model_config(spec, key=key)
        self.chat_setting = chat_setting
        self.add_bos = add_bos
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.bucket = bucket
        self.model = None
        tok = self.tokenizer
        eos = self.model_config.eos_token_ids or ((tok.eos_token_id,) if tok.eos_token_id is not None else ())
        self.eos = tuple(int(e) for e in eos)
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else (self.eos[0] if self.eos else 0)

    @property
    def name(self) -> str:
        return self.spec.name

    def encode(self, rows: Sequence[dict], where: str) -> list[list[int]]:
        """Token ids of each row's prompt; ``DataError`` naming the row when one cannot fit the context."""
        limit = self.model_config.max_position_embeddings
        out = []
        for row in rows:
            chat = uses_chat_template(self.tokenizer, self.chat_setting, row["prompt"])
            try:
                ids = encode_prompts(self.tokenizer, [row["prompt"]], chat_template=chat, add_bos=self.add_bos)[0]
            except TemplateError as e:  # a template the sandbox refuses, or one that raises on these messages
                raise DataError(f"{where}:row {row['prompt_id']}: the chat template of {self.key} {self.name!r} "
                                f"failed ({type(e).__name__}: {e})") from None
            if len(ids) + self.max_new_tokens > limit:
                raise DataError(
                    f"{where}:row {row['prompt_id']}: field 'prompt' has {len(ids)} tokens; with max_new_tokens="
                    f"{self.max_new_tokens} it exceeds {self.key} {self.name!r}'s context of {limit} tokens"
                )
            out.append(ids)
        return out

    def load(self, mesh) -> "PolicySampler":
        if self.model is None:
            with jax.set_mesh(mesh):
                self.model = build_model(self.spec, key=self.key, mesh=mesh)
        return self

    def sample(self, prompt_ids: Sequence[Sequence[int]], seed: int, batch_size: int = 0) -> tuple[list[str], int]:
        """Texts (EOS and special tokens removed) and the number of new tokens.

        A batch shorter than ``batch_size`` is padded with copies of its first prompt
        (dropped after), so every batch has one shape and the sampler compiles once.
        """
        n = len(prompt_ids)
        padded = list(prompt_ids) + [prompt_ids[0]] * max(batch_size - n, 0)
        new = generate_ids(self.model, padded, max_new_tokens=self.max_new_tokens, sampling=self.sampling,
                           seed=seed, eos_token_ids=self.eos, pad_token_id=self.pad, bucket=self.bucket)[:n]
        return [self._decode(toks) for toks in new], sum(len(t) for t in new)

    def sample_owned(self, prompt_ids: Sequence[Sequence[int]], seed: int, batch_size: int, mesh) -> tuple[dict[int, str], int]:
        """Multi-process ``sample``: the texts of the batch positions this process owns, and their new tokens.

        The batch, padded with copies of its first prompt to ``batch_size`` rounded up to the batch
        shards, is one global array over ``mesh``: every process pads the whole batch alike (same
        shapes), feeds its block of rows (``distributed.row_span``) and decodes only the real rows it
        owns (``distributed.owned_rows``), read from its own shards.
        """
        n = len(prompt_ids)
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        rows = -(-max(batch_size, n) // shards) * shards
        ids, mask = left_pad([list(p) for p in prompt_ids] + [list(prompt_ids[0])] * (rows - n), self.pad)
        lo, hi = distributed.row_span(mesh, rows)
        batch = distributed.global_batch({"ids": ids[lo:hi], "mask": mask[lo:hi]}, mesh, rows=rows)
        tokens, lengths = generate_arrays(self.model, batch["ids"], batch["mask"], max_new_tokens=self.max_new_tokens,
                                          sampling=self.sampling, seed=seed, eos_token_ids=self.eos,
                                          pad_token_id=self.pad, bucket=self.bucket)
        owned = distributed.owned_rows(mesh, rows)
        tokens, lengths = distributed.local_rows(tokens, mesh, owned), distributed.local_rows(lengths, mesh, owned)
        new = {r: toks[:length].tolist() for r, toks, length in zip(owned, tokens, lengths) if r < n}
        return {r: self._decode(toks) for r, toks in new.items()}, sum(len(t) for t in new.values())

    def _decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t not in self.eos], skip_special_tokens=True).strip()

    def as_message(self, row: dict, text: str) -> Any:
        """The response as the data pipeline should read it: a message list when the prompt used the chat template."""
        return [{"role": "assistant", "content": text}] if self.is_chat(row) else text

    def prompt_field(self, row: dict) -> Any:
        return [{"role": "user", "content": row["prompt"]}] if self.is_chat(row) and isinstance(row["prompt"], str) else row["prompt"]

    def is_chat(self, row: dict) -> bool:
        return uses_chat_template(self.tokenizer, self.chat_setting, row["prompt"])


def batch_seed(seed: int, batch: int, model: int = 0) -> int:
    """The sampling seed of batch ``batch`` for the ``model``-th model: fixed for a given run config
    (so a resumed run samples what an uninterrupted one would) and different per model (so a teacher
    and a student that are close do not draw the same random numbers and produce identical pairs)."""
    return (seed * 1_000_003 + batch * 1_009 + model) % (2**31 - 1)


def _rows_for_batch(mode: str, samplers: list[PolicySampler], batch: Sequence[dict], texts: list[list[str]]) -> list[dict]:
    first = samplers[0]
    out = []
    for j, row in enumerate(batch):
        extra = {k: v for k, v in row.items() if k not in ("prompt", "prompt_id", "prompt_key", "chosen", "rejected", "response")}
        base = {"prompt_id": row["prompt_id"], "prompt_key": row["prompt_key"], "prompt": first.prompt_field(row), **extra}
        if mode == "pairs":
            base.update(chosen=first.as_message(row, texts[0][j]), rejected=samplers[1].as_message(row, texts[1][j]),
                        chosen_model=samplers[0].name, rejected_model=samplers[1].name)
        elif len(samplers) == 1:
            base.update(response=first.as_message(row, texts[0][j]), model=first.name)
        else:
            base.update({s.name: texts[i][j] for i, s in enumerate(samplers)})
        out.append(base)
    return out


def generate_provenance(config: Config, specs: Sequence[GenerateModel]) -> dict:
    """What decides a ``generate`` output's values: each model and tokenizer (fingerprints), the
    sampling settings, the seed and batch size (batch ``b``'s seed), and the prompt layout settings."""
    from jaxalign.train.provenance import spec_fingerprint

    gen = config.generate
    record = {"kind": "generate", "generate.mode": gen.mode, "generate.temperature": gen.temperature,
              "generate.top_p": gen.top_p, "generate.top_k": gen.top_k, "generate.max_new_tokens": gen.max_new_tokens,
              "generate.seed": gen.seed, "generate.batch_size": gen.batch_size,
              "data.add_bos": config.data.add_bos, "data.use_chat_template": config.data.use_chat_template}
    for s in specs:
        record[f"model[{s.name}]"] = spec_fingerprint(s)
        record[f"tokenizer[{s.name}]"] = spec_fingerprint(s, tokenizer_only=True)
    return record


def check_resumable(output: str, what: str, writer: RowWriter, record: dict, *, ignore: bool, regenerate: str) -> bool:
    """Refuse to continue an output made with another provenance (or with none, when it has rows).
    Returns whether ``record`` still has to be written (the caller does so just before its first
    row, so a run that fails earlier leaves nothing behind). Shared by ``generate`` and ``score``."""
    from jaxalign.train.provenance import check_match, read_sidecar

    recorded = read_sidecar(output)
    if writer.rows_done or writer.complete:
        if recorded is None and not ignore:
            raise DataError(f"{what}={output} has rows but no provenance record ({Path(output).name}.provenance.json; "
                            f"written by an older jaxalign?); {regenerate}, or set data.ignore_provenance=true to continue it")
        if recorded is not None and not ignore:
            check_match(f"{what}={output}", recorded, record, regenerate=regenerate, ignore=("output",))
        return recorded is None
    return True


def run_generate(config: Config) -> GenerateResult:
    """Sample every prompt not yet in ``generate.output``; returns counts and speed.

    Holds the output's lock for the whole run (one writer per output). An existing output is
    continued only when its recorded provenance matches this run; its rows are matched to prompts
    by ``prompt_key`` (content hash), and rows of other prompts or duplicates are dropped, counted.
    """
    from jaxalign.train.locks import output_lock

    distributed.initialize(config.mesh.multihost)  # before anything (process_index) starts the backend
    gen = config.generate
    source = gen.prompts or config.data.path
    prompts = load_prompts(source, limit=gen.limit)
    specs = generation_models(config)
    if gen.mode == "pairs" and len(specs) != 2:
        raise DataError(f"generate.mode='pairs' needs two models, got {len(specs)}")
    with contextlib.ExitStack() as stack:  # process 0 holds the lock for all processes of a multi-process run
        distributed.on_main(lambda: stack.enter_context(output_lock(gen.output, key="generate.output", directory=False)),
                            f"locking generate.output={gen.output}")
        return _run_generate(config, source, prompts, specs)


def _run_generate(config: Config, source: str, prompts: list[dict], specs: list[GenerateModel]) -> GenerateResult:
    gen = config.generate
    sampling = SamplingParams(gen.temperature, gen.top_k, gen.top_p)
    samplers = [PolicySampler(s, key=f"generate.models[{i}]" if gen.models else ("teacher" if gen.mode == "pairs" and i == 0 else "model"),
                              chat_setting=config.data.use_chat_template, add_bos=config.data.add_bos,
                              max_new_tokens=gen.max_new_tokens, sampling=sampling)
                for i, s in enumerate(specs)]
    if gen.mode == "pairs" and samplers[0].model_config.vocab_size != samplers[1].model_config.vocab_size:
        raise DataError(
            f"generate.mode='pairs': {samplers[0].name!r} and {samplers[1].name!r} have different vocabularies "
            f"({samplers[0].model_config.vocab_size} vs {samplers[1].model_config.vocab_size}); daDPO needs a shared tokenizer"
        )
    encoded = [s.encode(prompts, source) for s in samplers]  # every prompt checked before any weights load

    multi, main = jax.process_count() > 1, jax.process_index() == 0
    order = {row["prompt_key"]: i for i, row in enumerate(prompts)}
    in_order = lambda row: order.get(row["prompt_key"], len(order))  # noqa: E731 (rows of other prompts last)

    def open_and_fold() -> RowWriter:  # rows an interrupted multi-process run left in part files join the output first
        opened = RowWriter(gen.output, key="prompt_key")
        fold_parts(opened, in_order)
        return opened

    writer = distributed.on_main(open_and_fold, f"merging the part files of generate.output={gen.output}")
    if writer is None:  # the other processes read what process 0 left
        writer = RowWriter(gen.output, key="prompt_key")
    record = generate_provenance(config, specs)
    unrecorded = check_resumable(gen.output, "generate.output", writer, record,
                    ignore=config.data.ignore_provenance,
                    regenerate=f"delete {gen.output} (or choose another generate.output) to regenerate")
    foreign, duplicates = writer.retain(set(order), rewrite=main)
    if (foreign or duplicates) and main:
        log.warning("%s: dropped %d row(s) of prompts not in %s and %d duplicate row(s)", gen.output, foreign, source, duplicates)
    todo = set() if writer.complete else {i for i, row in enumerate(prompts) if row["prompt_key"] not in writer.done_ids}
    rows_before = writer.rows_done
    # Each process of a multi-process run appends the rows it owns to its own part file.
    out = RowWriter(part_path(gen.output, jax.process_index(), jax.process_count()), key="prompt_key") if multi else writer
    start, tokens, new_rows = time.perf_counter(), 0, 0
    if writer.rows_done:
        log.info("%s: %d of %d rows already written; generating the other %d", gen.output, writer.rows_done, len(prompts), len(todo))
    interrupted = False
    if todo:
        mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
        for s in samplers:
            s.load(mesh)
        if unrecorded and main:
            write_sidecar(gen.output, record)
        bar = progress(total=len(prompts), initial=len(prompts) - len(todo), desc=f"generate {'/'.join(s.name for s in samplers)}",
                       unit="prompt", enabled=config.logging.progress_bar)
        with PreemptionGuard() as guard, jax.set_mesh(mesh):
            # Batches are cut from the full prompt list, so batch b (and its seed) is the same in every run.
            for b, batch_idx in iter_batches(list(range(len(prompts))), gen.batch_size):
                idx = [i for i in batch_idx if i in todo]
                if not idx:
                    continue
                texts = []
                # The whole batch is sampled (a row's sample depends on its slot in the batch), so a batch
                # cut short by a torn last line is redone as the uninterrupted run did it; its done rows are dropped.
                if multi:
                    owned = []
                    for m, (s, enc) in enumerate(zip(samplers, encoded)):
                        got, n = s.sample_owned([enc[i] for i in batch_idx], seed=batch_seed(gen.seed, b, m),
                                                batch_size=gen.batch_size, mesh=mesh)
                        owned.append(got)
                        tokens += n
                    mine = [j for j in sorted(owned[0]) if batch_idx[j] in todo]
                    batch = [prompts[batch_idx[j]] for j in mine]
                    texts = [[got[j] for j in mine] for got in owned]
                else:
                    batch = [prompts[i] for i in idx]
                    for m, (s, enc) in enumerate(zip(samplers, encoded)):
                        sampled, n = s.sample([enc[i] for i in batch_idx], seed=batch_seed(gen.seed, b, m),
                                              batch_size=gen.batch_size)
                        texts.append([t for t, i in zip(sampled, batch_idx) if i in todo])
                        tokens += n
                out.write(_rows_for_batch(gen.mode, samplers, batch, texts))
                new_rows += len(idx)  # over all processes
                bar.update(len(idx))
                bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.1f}")
                if distributed.agreed_stop(guard) if multi else guard.requested:  # multi-process: a batch all agree on
                    interrupted = True
                    log.warning("generate: stopped by %s after %d of %d rows; rerun the same command to continue",
                                guard.signal_name, rows_before + new_rows, len(prompts))
                    break
        bar.close()
    if not interrupted:
        distributed.barrier("generate: rows written")
        distributed.on_main(lambda: (fold_parts(writer, in_order), writer.finish()),
                            f"merging the part files into generate.output={gen.output}")
    seconds = time.perf_counter() - start
    result = GenerateResult(Path(gen.output), rows_before + new_rows, new_rows, tokens, seconds, interrupted)
    log.info("generate: %d rows in %s (%d new, %d tokens, %.1f tokens/s)", result.rows, gen.output, new_rows, tokens,
             result.tokens_per_second)
    return result
