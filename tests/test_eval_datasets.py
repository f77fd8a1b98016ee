"""Evaluation dataset loaders: QA JSONL, Alpaca JSON, PubMedQA, BEIR; every malformed case names file, line
(or row) and field; the real PubMedQA and SciFact folders load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragplug.errors import DatasetError, InvalidInputError
from ragplug.evaluators.datasets import QAItem, load_alpaca, load_beir, load_pubmedqa, load_qa_jsonl

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data from the project root
real_data = pytest.mark.skipif(not DATA.is_dir(), reason="the shared data folder is absent")


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- QA JSONL ------------------------------------------------------------------------------------------------


def test_qa_jsonl_loads_items_with_defaults_and_metadata(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "qa.jsonl",
        [
            json.dumps({"question": "Who?", "answer": "Marley", "gold_ids": ["p1", 7, "p1"], "lang": "en"}),
            "",
            "   ",
            json.dumps({"id": "x", "question": "Why?", "answer": None, "context": "Because."}),
            json.dumps({"id": 12, "question": "When?"}),
        ],
    )
    items = load_qa_jsonl(path)
    assert [i.id for i in items] == ["1", "x", "12"]
    assert items[0] == QAItem("1", "Who?", "Marley", ("p1", "7"), None, {"lang": "en"})
    assert items[1].answer is None and items[1].context == "Because." and items[1].gold_ids == ()
    assert items[2].answer is None and items[2].metadata == {}
    assert hash(items[0])  # usable in sets despite the metadata dict


@pytest.mark.parametrize(
    ("line", "where", "field"),
    [
        ('{"question": "a", ', "line 2", None),  # malformed JSON
        ('["a list"]', "line 2", None),
        ('{"answer": "no question"}', "line 2", "question"),
        ('{"question": "   "}', "line 2", "question"),
        ('{"question": 3}', "line 2", "question"),
        ('{"question": "q", "answer": 3}', "line 2", "answer"),
        ('{"question": "q", "id": 1.5}', "line 2", "id"),
        ('{"question": "q", "id": ""}', "line 2", "id"),
        ('{"question": "q", "gold_ids": "p1"}', "line 2", "gold_ids"),
        ('{"question": "q", "gold_ids": [["p1"]]}', "line 2", "gold_ids"),
        ('{"question": "q", "gold_ids": [null]}', "line 2", "gold_ids"),
        ('{"question": "q", "context": ["c"]}', "line 2", "context"),
        ('{"question": "q", "id": "first"}', "line 2", "id"),  # duplicate
    ],
)
def test_qa_jsonl_errors_name_file_line_and_field(tmp_path: Path, line: str, where: str, field: str | None) -> None:
    path = _write(tmp_path / "bad.jsonl", [json.dumps({"id": "first", "question": "ok"}), line])
    with pytest.raises(DatasetError) as err:
        load_qa_jsonl(path)
    message = str(err.value)
    assert str(path) in message and where in message, message
    if field is not None:
        assert f"field {field!r}" in message, message


def test_qa_jsonl_duplicate_ids_name_the_first_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "dup.jsonl", ['{"question": "a"}', '{"question": "b", "id": "1"}'])
    with pytest.raises(DatasetError, match=r"line 2: field 'id': duplicate id '1' \(first at line 1\)"):
        load_qa_jsonl(path)


def test_empty_missing_and_undecodable_files(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DatasetError, match=r"empty\.jsonl: line 1: the file holds no record"):
        load_qa_jsonl(empty)
    with pytest.raises(DatasetError, match=r"nothing\.jsonl: no such file"):
        load_qa_jsonl(tmp_path / "nothing.jsonl")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"question": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"latin\.jsonl: not UTF-8"):
        load_qa_jsonl(latin)
    assert issubclass(DatasetError, InvalidInputError)


def test_qa_item_checks_its_fields() -> None:
    with pytest.raises(InvalidInputError, match="question"):
        QAItem("a", "", None)
    with pytest.raises(InvalidInputError, match="gold_ids"):
        QAItem("a", "q", None, gold_ids="p1")  # type: ignore[arg-type]
    assert QAItem("a", "q", None, gold_ids=["p1"]).gold_ids == ("p1",)  # type: ignore[arg-type]


# --- Alpaca --------------------------------------------------------------------------------------------------


def test_alpaca_joins_instruction_and_input_like_the_alpaca_prompt(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Answer.", "input": "Question: q?\n\nContext:\nc", "output": "yes. because", "tag": 1},
        {"instruction": "Say hi.", "input": "", "output": "hi", "id": "h"},
        {"instruction": "Say bye.", "output": "bye"},
    ]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    items = load_alpaca(path)
    assert [i.id for i in items] == ["1", "h", "3"]
    assert items[0].question == "Answer.\n\nQuestion: q?\n\nContext:\nc"
    assert items[0].answer == "yes. because"
    assert items[0].metadata == {"instruction": "Answer.", "input": "Question: q?\n\nContext:\nc", "tag": 1}
    assert items[1].question == "Say hi." and items[2].question == "Say bye."


@pytest.mark.parametrize(
    ("rows", "where", "field"),
    [
        ([{"instruction": "i", "output": "o"}, {"output": "o"}], "row 2", "instruction"),
        ([{"instruction": "i", "output": "o"}, {"instruction": "i"}], "row 2", "output"),
        ([{"instruction": "i", "output": "o"}, {"instruction": "i", "input": 1, "output": "o"}], "row 2", "input"),
        ([{"instruction": "i", "output": "o"}, "text"], "row 2", None),
        (
            [{"instruction": "i", "output": "o", "id": "a"}, {"instruction": "j", "output": "o", "id": "a"}],
            "row 2",
            "id",
        ),
        ({"instruction": "i", "output": "o"}, "line 1", None),  # not a list
        ([], "line 1", None),
    ],
)
def test_alpaca_errors_name_file_row_and_field(tmp_path: Path, rows: object, where: str, field: str | None) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_alpaca(path)
    message = str(err.value)
    assert str(path) in message and where in message, message
    if field is not None:
        assert f"field {field!r}" in message, message


def test_alpaca_malformed_json_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.json", ["[", '  {"instruction": "i", "output": "o"},', "  {oops}", "]"])
    with pytest.raises(DatasetError, match=r"a.json: line 3: malformed JSON"):
        load_alpaca(path)


# --- PubMedQA ------------------------------------------------------------------------------------------------


def _pubmedqa(folder: Path, records: dict, truth: dict) -> Path:
    folder.mkdir()
    (folder / "ori_pqal.json").write_text(json.dumps(records), encoding="utf-8")
    (folder / "test_ground_truth.json").write_text(json.dumps(truth), encoding="utf-8")
    return folder


def _record(label: str = "yes", **extra: object) -> dict:
    return {"QUESTION": "Q?", "CONTEXTS": ["c1", "c2"], "LABELS": ["A", "B"], "final_decision": label, **extra}


def test_pubmedqa_splits_by_test_ground_truth(tmp_path: Path) -> None:
    folder = _pubmedqa(tmp_path / "p", {"1": _record(LONG_ANSWER="L"), "2": _record("no")}, {"2": "no"})
    test = load_pubmedqa(folder)
    train = load_pubmedqa(folder, split="train")
    assert [i.id for i in test.items] == ["2"] and [i.id for i in train.items] == ["1"]
    assert test.corpus == train.corpus == {"1": "A: c1\nB: c2", "2": "A: c1\nB: c2"}
    assert train.items[0] == QAItem(
        "1", "Q?", "yes", ("1",), "A: c1\nB: c2", {"source": "pubmedqa", "long_answer": "L"}
    )
    with pytest.raises(InvalidInputError, match="unknown PubMedQA split 'dev'"):
        load_pubmedqa(folder, split="dev")


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (_record("perhaps"), "final_decision"),
        ({**_record(), "QUESTION": ""}, "QUESTION"),
        ({**_record(), "CONTEXTS": []}, "CONTEXTS"),
        ({**_record(), "LABELS": ["A"]}, "LABELS"),
    ],
)
def test_pubmedqa_errors_name_file_record_and_field(tmp_path: Path, record: dict, field: str) -> None:
    folder = _pubmedqa(tmp_path / "p", {"1": _record(), "2": record}, {"1": "yes"})
    with pytest.raises(DatasetError, match=rf"ori_pqal.json: record '2' \(row 2\): field '{field}'"):
        load_pubmedqa(folder)


def test_pubmedqa_ground_truth_must_agree_with_the_records(tmp_path: Path) -> None:
    folder = _pubmedqa(tmp_path / "p", {"1": _record()}, {"1": "no"})
    with pytest.raises(DatasetError, match=r"test_ground_truth\.json: record '1'.*differs"):
        load_pubmedqa(folder)
    folder = _pubmedqa(tmp_path / "q", {"1": _record()}, {"9": "no"})
    with pytest.raises(DatasetError, match=r"test_ground_truth\.json: record '9'.*not in ori_pqal.json"):
        load_pubmedqa(folder)


# --- BEIR ----------------------------------------------------------------------------------------------------


def _beir(folder: Path, qrels: list[str], corpus: list[str] | None = None, queries: list[str] | None = None) -> Path:
    (folder / "qrels").mkdir(parents=True)
    docs = [json.dumps({"_id": d, "title": f"T{d}", "text": f"text {d}"}) for d in ("d1", "d2")]
    _write(folder / "corpus.jsonl", corpus if corpus is not None else docs)
    qs = [json.dumps({"_id": q, "text": f"query {q}"}) for q in ("q1", "q2", "q3")]
    _write(folder / "queries.jsonl", queries if queries is not None else qs)
    _write(folder / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", *qrels])
    return folder


def test_beir_loads_the_split_and_keeps_its_queries_only(tmp_path: Path) -> None:
    folder = _beir(tmp_path / "b", ["q1\td1\t1", "q1\td2\t0", "", "q2\td2\t2"])
    data = load_beir(folder)
    assert data.corpus["d1"] == {"title": "Td1", "text": "text d1"}
    assert data.queries == {"q1": "query q1", "q2": "query q2"}
    assert data.qrels == {"q1": {"d1": 1, "d2": 0}, "q2": {"d2": 2}}
    with pytest.raises(DatasetError, match=r"dev.tsv: no such file \(splits in .*: \['test'\]\)"):
        load_beir(folder, split="dev")
    with pytest.raises(InvalidInputError, match="plain file name"):
        load_beir(folder, split="../test")


@pytest.mark.parametrize(
    ("qrels", "corpus", "queries", "file", "where", "field"),
    [
        (["q1\td1"], None, None, "test.tsv", "line 2", None),
        (["q1\td1\tone"], None, None, "test.tsv", "line 2", "score"),
        (["q1\td1\t1", "q9\td1\t1"], None, None, "test.tsv", "line 3", "query-id"),
        (["q1\td9\t1"], None, None, "test.tsv", "line 2", "corpus-id"),
        (["q1\td1\t1", "q1\td1\t2"], None, None, "test.tsv", "line 3", "corpus-id"),
        ([], None, None, "test.tsv", "line 1", None),
        (
            ["q1\td1\t1"],
            ['{"_id": "d1", "text": "t"}', '{"title": "x", "text": "t"}'],
            None,
            "corpus.jsonl",
            "line 2",
            "_id",
        ),
        (
            ["q1\td1\t1"],
            ['{"_id": "d1", "text": "t"}', '{"_id": "d1", "text": "u"}'],
            None,
            "corpus.jsonl",
            "line 2",
            "_id",
        ),
        (["q1\td1\t1"], ['{"_id": "d1", "title": 3, "text": "t"}'], None, "corpus.jsonl", "line 1", "title"),
        (["q1\td1\t1"], ['{"_id": "d1"}'], None, "corpus.jsonl", "line 1", "text"),
        (["q1\td1\t1"], None, ['{"_id": "q1", "text": ""}'], "queries.jsonl", "line 1", "text"),
        (["q1\td1\t1"], None, ['{"_id": "q1", "text": "a"}', "{"], "queries.jsonl", "line 2", None),
    ],
)
def test_beir_errors_name_file_line_and_field(
    tmp_path: Path,
    qrels: list[str],
    corpus: list[str] | None,
    queries: list[str] | None,
    file: str,
    where: str,
    field: str | None,
) -> None:
    folder = _beir(tmp_path / "b", qrels, corpus, queries)
    with pytest.raises(DatasetError) as err:
        load_beir(folder)
    message = str(err.value)
    assert f"{file}: {where}" in message, message
    if field is not None:
        assert f"field {field!r}" in message, message


# --- the real data -------------------------------------------------------------------------------------------


@real_data
def test_real_pubmedqa_loads_with_the_official_split() -> None:
    test = load_pubmedqa(DATA / "pubmedqa")
    train = load_pubmedqa(DATA / "pubmedqa", split="train")
    assert len(test.items) == len(train.items) == 500 and len(test.corpus) == 1000
    assert {i.id for i in test.items}.isdisjoint(i.id for i in train.items)
    truth = json.loads((DATA / "pubmedqa" / "test_ground_truth.json").read_text(encoding="utf-8"))
    assert {i.id: i.answer for i in test.items} == truth
    alpaca_test = load_alpaca(DATA / "pubmedqa" / "pqal_alpaca_test.json")
    assert [i.id for i in alpaca_test] == [i.id for i in test.items]
    first = test.items[0]
    assert first.id == "21645374" and first.gold_ids == ("21645374",)
    assert first.question.startswith("Do mitochondria play a role") and first.answer == "yes"
    assert first.context == test.corpus[first.id] and "long_answer" in first.metadata
    # The corpus passage is exactly the Alpaca input's context, so RAG and LoRA prompts agree.
    assert alpaca_test[0].metadata["input"] == f"Question: {first.question}\n\nContext:\n{first.context}"
    assert alpaca_test[0].question.startswith("Answer the biomedical research question")
    assert alpaca_test[0].answer is not None and alpaca_test[0].answer.startswith("yes.")


@real_data
def test_real_scifact_loads() -> None:
    test = load_beir(DATA / "scifact")
    assert (len(test.corpus), len(test.queries), len(test.qrels)) == (5183, 300, 300)
    assert sum(len(j) for j in test.qrels.values()) == 339
    assert test.qrels["1"] == {"31715818": 1}
    assert set(test.corpus["4983"]) == {"title", "text"}
    train = load_beir(DATA / "scifact", split="train")
    assert (len(train.queries), sum(len(j) for j in train.qrels.values())) == (809, 919)
