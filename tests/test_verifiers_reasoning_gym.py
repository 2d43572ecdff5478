"""The reasoning_gym verifier, end to end with the real ``products`` task and its own scorer."""

from __future__ import annotations

import json

import pytest
import reasoning_gym

from workbench.errors import DataError, WorkbenchError
from workbench.verifiers import get_verifier
from workbench.verifiers.reasoning_gym import (
    ReasoningGymVerifier,
    entry_to_reference,
    extract_answer,
    make_rows,
    reference_to_entry,
)

ONE_DIGIT = {"min_digits": 1, "max_digits": 1}


@pytest.fixture(scope="module")
def entries() -> list[dict]:
    return list(reasoning_gym.create_dataset("products", size=6, seed=1234, **ONE_DIGIT))


@pytest.fixture(scope="module")
def verifier() -> ReasoningGymVerifier:
    return get_verifier("reasoning_gym", task="products", task_config=ONE_DIGIT)


def test_one_digit_config(entries):
    for entry in entries:
        a, b = (int(x) for x in entry["metadata"]["expression"].split(" * "))
        assert 0 <= a <= 9 and 0 <= b <= 9
        assert entry["answer"] == str(a * b)


@pytest.mark.parametrize("template", [
    "Multiplying: {expr} = {answer}.\n<answer>{answer}</answer>",
    "{expr} = {answer}, so the answer is {answer}.",
    "We get \\boxed{{{answer}}}",
    "Thinking...\n{answer}",
    "#### {answer}",
])
def test_correct_completion_passes(verifier, entries, template):
    for entry in entries:
        completion = template.format(expr=entry["metadata"]["expression"], answer=entry["answer"])
        verdict = verifier.verify(entry["question"], completion, entry_to_reference(entry))
        assert verdict.passed and verdict.score == 1.0, (completion, verdict.details)
        assert verdict.extracted == entry["answer"]


def test_wrong_completion_fails(verifier, entries):
    for entry in entries:
        wrong = str(int(entry["answer"]) + 1)
        verdict = verifier.verify(entry["question"], f"<answer>{wrong}</answer>", entry_to_reference(entry))
        assert not verdict.passed
        assert verdict.score < 1.0
        assert verdict.details["reason"] in ("wrong answer", "partial credit")


def test_partial_credit_and_threshold(entries):
    entry = next(e for e in entries if len(e["answer"]) >= 1)
    completion = f"<answer>I think it is {entry['answer']}</answer>"  # the scorer gives len(gold)/len(text)
    strict = get_verifier("reasoning_gym", task="products", task_config=ONE_DIGIT)
    verdict = strict.verify("", completion, entry_to_reference(entry))
    assert 0.0 < verdict.score < 1.0 and not verdict.passed
    assert verdict.details["reason"] == "partial credit"
    lenient = get_verifier("reasoning_gym", task="products", task_config=ONE_DIGIT, pass_threshold=0.01)
    assert lenient.verify("", completion, entry_to_reference(entry)).passed


def test_empty_completion(verifier, entries):
    verdict = verifier.verify("", "  ", entry_to_reference(entries[0]))
    assert verdict.score == 0.0 and not verdict.passed
    assert verdict.details["reason"] == "empty completion" and verdict.details["extracted"] is None


def test_reference_round_trip(entries):
    for entry in entries:
        reference = entry_to_reference(entry)
        assert isinstance(reference, str)
        assert reference_to_entry(reference) == json.loads(json.dumps(entry))


@pytest.mark.parametrize("reference", ["42", "not json", "[1, 2]", '{"question": "q"}'])
def test_bad_reference_raises_data_error(verifier, reference):
    with pytest.raises(DataError, match="reference"):
        verifier.verify("", "<answer>1</answer>", reference)


def test_make_rows():
    rows = make_rows("products", size=3, seed=7, task_config=ONE_DIGIT)
    assert len(rows) == 3
    for row in rows:
        assert set(row) == {"prompt", "reference", "answer"}
        assert "multiplication" in row["prompt"]
        assert reference_to_entry(row["reference"])["answer"] == row["answer"]
    assert rows == make_rows("products", size=3, seed=7, task_config=ONE_DIGIT)  # seeded


def test_extract_answer_order():
    assert extract_answer("x \\boxed{3}\n<answer> 5 </answer>") == ("5", "answer_tag")
    assert extract_answer("\\boxed{3}\nThe answer is 4.") == ("3", "boxed")
    assert extract_answer("so the answer is 4.") == ("4", "answer_is")
    assert extract_answer("work\n\n 12 \n") == ("12", "last_line")
    assert extract_answer("\n\n") == (None, None)


def test_unknown_task_is_a_workbench_error():
    with pytest.raises(WorkbenchError, match="no_such_task"):
        get_verifier("reasoning_gym", task="no_such_task")
