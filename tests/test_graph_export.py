"""Graph export: GraphML and JSON files read back whole, neighbourhoods cut by hops, pictures written."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ragplug.errors import InvalidInputError, UnknownIdError
from ragplug.retrievers.graph.export import (
    draw_neighbourhood,
    from_json,
    neighbourhood,
    to_graphml,
    to_json,
)
from ragplug.retrievers.graph.model import CO_OCCURS, SYNONYM, Community, GraphSnapshot


def chain() -> GraphSnapshot:
    """A chain of entities a - b - c - d - e, passages p-ab (a, b) and p-de (d, e), a synonym b ~ x."""
    keys = ["a", "b", "c", "d", "e", "x"]
    return GraphSnapshot.build(
        version=3,
        passage_ids=["p-ab", "p-de", "p-empty"],
        entities=[(k, f"Entity {k.upper()}") for k in keys],
        mentions=[("a", "p-ab", 2.0), ("b", "p-ab", 1.0), ("d", "p-de", 1.0), ("e", "p-de", 1.0)],
        relations=[
            ("a", "b", CO_OCCURS, 1.0),
            ("b", "a", "knows", 0.5),
            ("b", "c", CO_OCCURS, 1.0),
            ("c", "d", CO_OCCURS, 1.0),
            ("d", "e", CO_OCCURS, 1.0),
            ("b", "x", SYNONYM, 0.9),
        ],
    )


COMMUNITIES = [
    Community("c0-0", ("a", "b", "c"), ("p-ab",), "Entity A, Entity B", "Key entities: Entity A.", 0, 2.5),
    Community("c1-0", ("a", "b", "c", "d", "e"), ("p-ab", "p-de"), "All", "Everything.", 1, 4.0),
]


def test_graphml_reads_back_with_the_same_nodes_and_edges(tmp_path: Path) -> None:
    import igraph

    snapshot = chain()
    path = to_graphml(snapshot, tmp_path / "graph.graphml")
    graph = igraph.Graph.Read_GraphML(str(path))
    assert graph.vcount() == 6 + 3
    assert graph.ecount() == 5 + 4  # relations (a-b aggregated) + mentions
    assert graph.vs["type"] == ["entity"] * 6 + ["passage"] * 3
    assert graph.vs["key"][:6] == snapshot.entity_keys
    assert graph.vs["name"][0] == "Entity A"
    a, p_ab = graph.vs.find(key="a").index, graph.vs.find(key="p-ab").index
    assert graph.es[graph.get_eid(a, p_ab)]["weight"] == pytest.approx(2.0)
    assert graph.es[graph.get_eid(a, p_ab)]["label"] == "mentions"
    assert graph.es[graph.get_eid(a, graph.vs.find(key="b").index)]["label"] == "co-occurs,knows"
    assert [p.name for p in tmp_path.iterdir()] == ["graph.graphml"]  # no temporary file left


def test_json_round_trip(tmp_path: Path) -> None:
    snapshot = chain()
    path = to_json(snapshot, tmp_path / "graph.json", communities=COMMUNITIES)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["kind"] == "ragplug-graph"
    assert raw["version"] == 3
    assert raw["entities"][0] == {"key": "a", "name": "Entity A"}
    assert {"source": "a", "target": "b", "label": "co-occurs,knows", "weight": 1.5} in raw["relations"]
    assert {"entity": "a", "passage": "p-ab", "count": 2.0} in raw["mentions"]
    assert raw["communities"][1]["title"] == "All"
    back, communities = from_json(path)
    assert communities == COMMUNITIES
    assert back.version == snapshot.version
    assert back.passage_ids == snapshot.passage_ids
    assert back.entity_keys == snapshot.entity_keys
    assert back.entity_names == snapshot.entity_names
    assert back.relation_labels == snapshot.relation_labels
    np.testing.assert_array_equal(back.relations, snapshot.relations)
    np.testing.assert_array_equal(back.relation_weights, snapshot.relation_weights)
    np.testing.assert_array_equal(back.mentions, snapshot.mentions)
    np.testing.assert_array_equal(back.mention_counts, snapshot.mention_counts)
    again, none = from_json(to_json(snapshot, tmp_path / "bare.json"))
    assert none == []
    assert again.entity_keys == snapshot.entity_keys


def test_json_of_an_empty_graph_round_trips(tmp_path: Path) -> None:
    empty = GraphSnapshot.build(0, [], [], [], [])
    back, communities = from_json(to_json(empty, tmp_path / "empty.json"))
    assert (back.entity_keys, back.passage_ids, communities) == ([], [], [])
    assert back.relations.shape == (0, 2)
    assert back.mentions.shape == (0, 2)


def test_from_json_refuses_other_files(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"nodes": [], "links": []}), encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"other\.json"):
        from_json(other)
    broken = tmp_path / "broken.json"
    data = json.loads(to_json(chain(), tmp_path / "ok.json").read_text(encoding="utf-8"))
    data["relations"][0]["source"] = "nobody"
    broken.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InvalidInputError, match="nobody"):
        from_json(broken)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = to_json(chain(), tmp_path / "graph.json")
    before = path.read_bytes()

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", fail)
    with pytest.raises(OSError, match="disk full"):
        to_json(chain(), path, communities=COMMUNITIES)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["graph.json"]


def test_neighbourhood_grows_with_hops() -> None:
    snapshot = chain()
    zero = neighbourhood(snapshot, "c", hops=0)
    assert zero.vs["key"] == ["c"]
    assert zero.ecount() == 0
    one = neighbourhood(snapshot, "c", hops=1)
    assert one.vs["key"][0] == "c"
    assert set(one.vs["key"]) == {"b", "c", "d"}
    assert one.vs["hop"] == [0, 1, 1]
    assert one.ecount() == 2
    two = neighbourhood(snapshot, "c", hops=2)
    assert set(two.vs["key"]) == {"a", "b", "c", "d", "e", "x", "p-ab", "p-de"}
    assert two.vs.find(key="p-ab")["type"] == "passage"
    assert two.vs.find(key="p-ab")["hop"] == 2
    # Every edge among the chosen vertices is kept, with its weight and label.
    assert two.ecount() == 5 + 4  # a-b, b-c, c-d, d-e, b-x; a, b, d and e mentioned in p-ab / p-de
    a_b = two.es[two.get_eid(two.vs.find(key="a").index, two.vs.find(key="b").index)]
    assert a_b["weight"] == pytest.approx(1.5)
    assert a_b["label"] == "co-occurs,knows"


def test_neighbourhood_keeps_the_strongest_links_within_max_nodes() -> None:
    # Around b: a (relation weight 1.5), c (1.0), p-ab (mention count 1.0), x (synonym 0.9).
    graph = neighbourhood(chain(), "b", hops=1, max_nodes=3)
    assert graph.vcount() == 3
    assert graph.vs["key"] == ["b", "a", "c"]  # a 1.5; then c and p-ab tie at 1.0, by key "c" < "p-ab"
    assert neighbourhood(chain(), "b", hops=1, max_nodes=1).vs["key"] == ["b"]


def test_neighbourhood_accepts_any_spelling_of_a_key() -> None:
    assert neighbourhood(chain(), "  C's ", hops=0).vs["key"] == ["c"]


def test_unknown_entity_names_it_and_suggests_close_keys() -> None:
    snapshot = GraphSnapshot.build(1, [], [("ebenezer scrooge", "Scrooge"), ("marley", "Marley")], [], [])
    with pytest.raises(UnknownIdError) as info:
        neighbourhood(snapshot, "ebenezer scroge")
    message = str(info.value)
    assert "'ebenezer scroge'" in message
    assert "'ebenezer scrooge'" in message
    assert "marley" not in message
    with pytest.raises(UnknownIdError, match=r"^unknown entity 'zzz'$"):
        neighbourhood(snapshot, "zzz")


@pytest.mark.parametrize("bad", [{"hops": -1}, {"max_nodes": 0}])
def test_neighbourhood_refuses_bad_sizes(bad: dict[str, int]) -> None:
    with pytest.raises(InvalidInputError):
        neighbourhood(chain(), "a", **bad)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_draw_neighbourhood_writes_a_png(tmp_path: Path) -> None:
    import random

    import matplotlib

    backend = matplotlib.get_backend()
    random.seed(42)
    expected_draw = random.random()
    random.seed(42)
    path = draw_neighbourhood(chain(), "b", tmp_path / "b.png", hops=2, title="Around B")
    width, height = png_size(path)
    assert width > 100
    assert height > 100
    assert matplotlib.get_backend() == backend  # the caller's backend is left alone
    assert random.random() == expected_draw  # and so is the state of Python's random module
    labelled = draw_neighbourhood(chain(), "b", tmp_path / "labels.png", edge_labels=True)
    assert png_size(labelled) == (width, height)
    assert labelled.read_bytes() != path.read_bytes()
    again = draw_neighbourhood(chain(), "b", tmp_path / "again.png", hops=2, title="Around B")
    assert again.read_bytes() == path.read_bytes()  # seeded layout: the same picture
    lonely = draw_neighbourhood(chain(), "x", tmp_path / "x.png", hops=0)
    assert png_size(lonely) == (width, height)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.png", "b.png", "labels.png", "x.png"]


def test_draw_neighbourhood_of_an_unknown_entity_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(UnknownIdError):
        draw_neighbourhood(chain(), "nobody", tmp_path / "n.png")
    assert list(tmp_path.iterdir()) == []
