"""A user's prompt files as a task: JSONL, JSON, Parquet, CSV or a `save_to_disk` dir, read with
Hugging Face `datasets` from local files only.

A row's prompt (`prompt_key`) is a non-empty string, or a list of chat messages
`[{role, content}, ...]` rendered with the policy tokenizer's chat template
(`add_generation_prompt=True`). An optional `label_key` column is handed to reward functions.
Every row is checked before anything starts; an error names the file, the row and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.base import PromptStream, Task

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """A problem in a user's data file: `file:row N key: message`."""


@dataclass(frozen=True)
class Prompts:
    texts: tuple[str, ...]  # rendered prompt text, one per row
    labels: tuple[str | None, ...]  # the row's label (str(value)), or None
    token_counts: tuple[int, ...]  # prompt tokens under the policy tokenizer


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a local data file or `save_to_disk` dir, as dicts."""
    import datasets

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    datasets.disable_progress_bars()
    try:
        if p.is_dir():
            data = datasets.load_from_disk(str(p))
            if isinstance(data, datasets.DatasetDict):
                raise DataError(f"{p}: a DatasetDict ({', '.join(data)}); point at one split")
        elif p.suffix in FORMATS:
            data = datasets.load_dataset(FORMATS[p.suffix], data_files=str(p), split="train")
        else:
            raise DataError(f"{p}: unknown format '{p.suffix}' (use {', '.join(FORMATS)} or a "
                            "save_to_disk dir)")
    except DataError:
        raise
    except Exception as e:  # the reader's own message names what it could not parse
        raise DataError(f"{p}: cannot read: {e}") from None
    return list(data)


def render_prompts(path: str | Path, rows: list[dict], prompt_key: str, label_key: str | None,
                   tokenizer) -> Prompts:
    """Check every row and render its prompt; token counts under `tokenizer`."""
    if not rows:
        raise DataError(f"{path}: no rows")
    texts, labels = [], []
    for i, row in enumerate(rows, start=1):
        where = f"{path}:row {i}"
        if prompt_key not in row:
            raise DataError(f"{where}: no key '{prompt_key}' (task.prompt_key); the row has "
                            f"{', '.join(row) or 'no keys'}")
        texts.append(_render(row[prompt_key], where, prompt_key, tokenizer))
        if label_key is not None:
            if label_key not in row or row[label_key] is None:
                raise DataError(f"{where}: no value for '{label_key}' (task.label_key)")
            labels.append(str(row[label_key]))
        else:
            labels.append(None)
    counts = [len(x) for x in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    return Prompts(tuple(texts), tuple(labels), tuple(counts))


def _render(value, where: str, key: str, tokenizer) -> str:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where} {key}: empty prompt")
        return value
    if not isinstance(value, list) or not value:
        raise DataError(f"{where} {key}: expected a string or a list of chat messages, got "
                        f"{type(value).__name__}")
    for j, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):
            raise DataError(f"{where} {key}[{j}]: a chat message is {{role: str, content: str}}, "
                            f"got {m!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where} {key}: chat messages need a tokenizer with a chat template; "
                        f"the policy tokenizer has none (give plain string prompts instead)")
    text = tokenizer.apply_chat_template(value, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token  # the engines tokenize with special tokens: BOS once, not twice
    return text[len(bos):] if bos and text.startswith(bos) else text


def load_dataset_task(cfg) -> Task:
    """The run's `task: {kind: dataset}`: prompt files checked and rendered with the policy's
    tokenizer (policy.model_dir); eval prompts from `eval` or `eval_fraction` of train."""
    import random

    from transformers import AutoTokenizer

    tc = cfg.task
    model_dir = Path(cfg.policy.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = read_rows(tc.train)
    if tc.eval is None:
        order = list(range(len(rows)))
        random.Random(cfg.seed).shuffle(order)
        n_eval = int(len(rows) * tc.eval_fraction)
        eval_rows = [rows[i] for i in sorted(order[:n_eval])]
        rows = [rows[i] for i in sorted(order[n_eval:])]
        eval_path = f"{tc.train} (held out)"
    else:
        eval_rows, eval_path = read_rows(tc.eval), tc.eval
    train = render_prompts(tc.train, rows, tc.prompt_key, tc.label_key, tokenizer)
    if tc.truncate == "drop" and min(train.token_counts) > tc.max_prompt_tokens:
        raise DataError(f"{tc.train}: every prompt is longer than task.max_prompt_tokens "
                        f"({tc.max_prompt_tokens} tokens; the shortest has "
                        f"{min(train.token_counts)})")
    evals = (render_prompts(eval_path, eval_rows, tc.prompt_key, tc.label_key, tokenizer)
             if eval_rows else Prompts((), (), ()))
    return Task(name=f"dataset/{Path(tc.train).name}", tokenizer_dir=model_dir,
                policy_dirs=[model_dir], reward_dirs=[],
                train=PromptStream(train.texts, cfg.seed,
                                   train.labels if tc.label_key else None, train.token_counts),
                eval_prompts=list(evals.texts), gold=None,
                heldout_texts=list(evals.texts), max_prompt_tokens=tc.max_prompt_tokens,
                truncate=tc.truncate)
