"""GrowingList: the JSON of a list that grows by a round at a time, each settled item encoded
once, is always the text json.dumps gives for the whole list now."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fedflow.results.rundir import GrowingList, encode_object


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# an operation: append a new item, change one of the last two items (as a training round fills
# in the previous round's validation), replace the whole list, or drop its last item
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 99)),
        st.tuples(st.just("change"), st.integers(1, 2)),
        st.tuples(st.just("replace"), st.integers(0, 5)),
        st.tuples(st.just("pop"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_OPS)
def test_the_text_is_always_that_of_the_whole_list(ops: list[tuple[str, int]]) -> None:
    encoder = GrowingList(_compact, open=2)
    items: list[dict[str, Any]] = []
    for op, value in ops:
        if op == "append":
            items.append({"round": len(items), "value": value, "global": {}})
        elif op == "change" and len(items) >= value:
            items[-value]["global"] = {"loss": value / 7}
        elif op == "replace":  # e.g. a resumed run's history: another list object
            items = [{"round": i, "value": i, "global": {}} for i in range(value)]
        elif op == "pop" and items:
            items.pop()
        assert encoder(items) == _compact(items)


def test_a_settled_item_is_encoded_once() -> None:
    calls: list[Any] = []

    def counting(value: Any) -> str:
        calls.append(value)
        return _compact(value)

    encoder = GrowingList(counting, open=2)
    items: list[dict[str, int]] = []
    for k in range(10):
        items.append({"round": k})
        encoder(items)
    first = sum(1 for c in calls if c is items[0])
    assert first == 3  # while it was among the last two items, then once when it settled


def test_an_item_replaced_in_the_kept_prefix_is_seen() -> None:
    encoder = GrowingList(_compact, open=1)
    items = [{"a": 1}, {"a": 2}, {"a": 3}]
    encoder(items)
    items[0] = {"a": 9}  # another object: compared by identity
    assert encoder(items) == _compact(items)


def test_encode_object_keeps_the_key_order_and_the_plain_text() -> None:
    data = {"phases": [1, 2], "rounds": [{"r": 1}, {"r": 2}, {"r": 3}], "z": "é", "a": None}
    text = encode_object(data, _compact, {"rounds": GrowingList(_compact)})
    assert text == _compact(data)
    assert encode_object(data, _compact, {}) == _compact(data)
