"""A user's prompt files through HF `datasets` (tasks/dataset.py): every format, chat
messages, and errors that name the file, the row and the key."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tasks.dataset import DataError, read_rows, render_prompts

ROWS = [{"prompt": "The movie", "answer": "7"}, {"prompt": "My lamp", "answer": "3"}]
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tokenizer(micro_world):
    return AutoTokenizer.from_pretrained(micro_world.tokenizer_dir)


def write(tmp_path, fmt: str, rows=ROWS):
    import datasets

    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    elif fmt == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif fmt == "disk":
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "disk"])
def test_every_format_reads_the_same_rows(tmp_path, tokenizer, fmt):
    path = write(tmp_path, fmt)
    prompts = render_prompts(path, read_rows(path), "prompt", "answer", tokenizer)
    assert prompts.texts == ("The movie", "My lamp")
    assert prompts.labels == ("7", "3")
    assert prompts.token_counts == tuple(len(tokenizer(t)["input_ids"]) for t in prompts.texts)


def test_chat_messages_use_the_chat_template(tmp_path, tokenizer):
    rows = [{"prompt": [{"role": "system", "content": "Be kind."},
                        {"role": "user", "content": "Review the lamp."}]}]
    path = write(tmp_path, "jsonl", rows)
    with pytest.raises(DataError, match=r"row 1 prompt: chat messages need a tokenizer with a "
                                        r"chat template"):
        render_prompts(path, read_rows(path), "prompt", None, tokenizer)
    tokenizer.chat_template = CHAT
    try:
        prompts = render_prompts(path, read_rows(path), "prompt", None, tokenizer)
    finally:
        tokenizer.chat_template = None
    assert prompts.texts == ("<|system|>Be kind.\n<|user|>Review the lamp.\n<|assistant|>",)
    assert prompts.labels == (None,)


@pytest.mark.parametrize("rows,key,label,message", [
    ([{"text": "a"}], "prompt", None, r"row 1: no key 'prompt' \(task.prompt_key\); the row "
                                      r"has text"),
    ([{"prompt": "a"}, {"prompt": "  "}], "prompt", None, r"row 2 prompt: empty prompt"),
    ([{"prompt": 5}], "prompt", None, r"row 1 prompt: expected a string or a list of chat "
                                      r"messages, got int"),
    ([{"prompt": [{"role": "user"}]}], "prompt", None, r"row 1 prompt\[0\]: a chat message is"),
    ([{"prompt": "a", "answer": None}], "prompt", "answer", r"row 1: no value for 'answer'"),
])
def test_bad_rows_name_file_row_and_key(tmp_path, tokenizer, rows, key, label, message):
    path = write(tmp_path, "jsonl", rows)
    with pytest.raises(DataError, match=message) as e:
        render_prompts(path, read_rows(path), key, label, tokenizer)
    assert str(path) in str(e.value)


def test_missing_unknown_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown format '.txt'"):
        read_rows(tmp_path / "x.txt")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{not json\n')
    with pytest.raises(DataError, match="bad.jsonl: cannot read"):
        read_rows(tmp_path / "bad.jsonl")
