"""The frontend tokenizer: round trips of any UTF-8 text, BOS from tokenizer_config.json,
determinism of the demo tokenizer, and the files write_test_tokenizer leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from infermesh_cli.demo_tokenizer import MIN_VOCAB_SIZE, build_demo_tokenizer, write_tokenizer_files
from infermesh_frontend.tokenizer import FrontendTokenizer, TokenizerLoadError

from tests.model_factory import write_test_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    write_tokenizer_files(out, build_demo_tokenizer(512))
    return out


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> FrontendTokenizer:
    return FrontendTokenizer.from_model_path(model_dir)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.just("a<s>b</s>"))
def test_round_trip_of_any_utf8(tokenizer: FrontendTokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert all(0 <= token_id < tokenizer.vocab_size for token_id in ids)
    # Special-token text such as "<s>" becomes its special id, so keep special tokens when decoding.
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_prompt_gets_bos_from_tokenizer_config(tokenizer: FrontendTokenizer) -> None:
    assert tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2
    ids = tokenizer.encode("héllo 🙂", add_special_tokens=True)
    assert ids[0] == 1
    assert ids[1:] == tokenizer.encode("héllo 🙂", add_special_tokens=False)
    assert tokenizer.decode(ids) == "héllo 🙂"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<s>héllo 🙂"
    assert tokenizer.chat_template and "add_generation_prompt" in tokenizer.chat_template


def test_add_bos_false_and_dict_tokens(tmp_path: Path) -> None:
    write_tokenizer_files(tmp_path, build_demo_tokenizer(300))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["add_bos_token"] = False
    config["eos_token"] = {"content": "</s>", "lstrip": False}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = FrontendTokenizer.from_model_path(tmp_path)
    assert tokenizer.eos_token_id == 2
    assert tokenizer.encode("abc") == tokenizer.encode("abc", add_special_tokens=False)


def test_missing_tokenizer_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerLoadError, match="no tokenizer.json"):
        FrontendTokenizer.from_model_path(tmp_path)


def test_demo_tokenizer_is_the_same_in_another_process() -> None:
    # Rust hash maps are seeded per process; a fresh interpreter shows training does not depend on it.
    code = (
        "from infermesh_cli.demo_tokenizer import build_demo_tokenizer; "
        "print(build_demo_tokenizer(400).to_str())"
    )
    other = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert other.strip() == build_demo_tokenizer(400).to_str()


def test_demo_tokenizer_sizes() -> None:
    assert build_demo_tokenizer(MIN_VOCAB_SIZE).get_vocab_size() == MIN_VOCAB_SIZE
    assert build_demo_tokenizer(1024).get_vocab_size() == 1024
    with pytest.raises(ValueError, match="at least 259"):
        build_demo_tokenizer(256)


def test_write_test_tokenizer_aligns_model_ids(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"vocab_size": 600, "bos_token_id": 7, "eos_token_id": 9})
    )
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 10]}))
    ids = write_test_tokenizer(tmp_path, 512)
    assert ids == {"bos_token_id": 1, "eos_token_id": 2, "vocab_size": 512}
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 2
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == 2
    assert FrontendTokenizer.from_model_path(tmp_path).vocab_size == 512
    with pytest.raises(ValueError, match="exceeds the model's vocab_size 600"):
        write_test_tokenizer(tmp_path, 700)
