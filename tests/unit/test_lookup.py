"""The n-gram draft finder of speculative decoding (spaceserve/engine/lookup.py)."""

from __future__ import annotations

from spaceserve.engine.lookup import NgramLookup


def test_draft_is_what_followed_the_tail_before() -> None:
    lookup = NgramLookup([1, 2, 3, 4, 5, 6, 9, 2, 3], ngram_max=3, ngram_min=2)
    assert lookup.draft(3) == [4, 5, 6]
    assert lookup.draft(1) == [4]
    assert lookup.draft(0) == []


def test_the_longest_matching_tail_wins_over_a_later_shorter_one() -> None:
    # "2 3" last occurred before 8, but "1 2 3" (longer) before 4.
    lookup = NgramLookup([1, 2, 3, 4, 4, 2, 3, 8, 7, 1, 2, 3], ngram_max=3, ngram_min=2)
    assert lookup.draft(2) == [4, 4]


def test_the_latest_occurrence_of_a_tail_is_used() -> None:
    lookup = NgramLookup([5, 6, 1, 5, 6, 2, 0, 5, 6], ngram_max=3, ngram_min=2)
    assert lookup.draft(4) == [2, 0, 5, 6]


def test_no_draft_without_an_earlier_occurrence_or_for_a_single_token() -> None:
    assert NgramLookup([1, 2, 3, 4], ngram_max=3, ngram_min=2).draft(4) == []
    assert NgramLookup([7, 1, 9, 7], ngram_max=3, ngram_min=2).draft(4) == []  # only "7" matches: too weak a guess
    assert NgramLookup([], ngram_max=3, ngram_min=2).draft(4) == []


def test_added_tokens_extend_the_history_and_the_draft_stops_at_its_end() -> None:
    lookup = NgramLookup([10, 11, 12, 13], ngram_max=3, ngram_min=2)
    assert lookup.draft(8) == []
    lookup.add(10)
    lookup.add(11)
    assert lookup.draft(8) == [12, 13, 10, 11]
    lookup.add(99)
    assert lookup.draft(8) == []


def test_a_repeating_run_drafts_itself() -> None:
    lookup = NgramLookup([4, 4, 4], ngram_max=3, ngram_min=2)
    assert lookup.draft(5) == [4]


def test_by_default_only_a_twelve_token_tail_seen_before_starts_a_draft() -> None:
    page = list(range(100, 140))
    lookup = NgramLookup([*page, 7, *page[:11]])
    assert lookup.draft(8) == []  # 11 tokens of the page: not yet a copy
    lookup.add(page[11])
    assert lookup.draft(8) == page[12:20]


def test_a_request_whose_drafts_are_mostly_rejected_stops_drafting() -> None:
    # Scheduler._draft on its own: the scheduler's state it reads is the slot and two numbers.
    from types import SimpleNamespace

    from spaceserve.engine.scheduler import DRAFT_PROBATION, Scheduler, Slot
    from spaceserve.engine.types import GenerationRequest

    owner = SimpleNamespace(draft_max=8, model=SimpleNamespace(shape=SimpleNamespace(per_slot=4096)))
    slot = Slot(
        0,
        request=GenerationRequest(prompt=[1], max_tokens=1000),
        lookup=NgramLookup([1, 2, 3, 4, 1, 2], ngram_max=3, ngram_min=2),
    )
    assert Scheduler._draft(owner, slot, 100) == [3, 4, 1, 2]  # type: ignore[arg-type]
    slot.drafted, slot.accepted = DRAFT_PROBATION, DRAFT_PROBATION // 4
    assert Scheduler._draft(owner, slot, 100) == [3, 4, 1, 2]  # type: ignore[arg-type]  # a quarter: still drafts
    slot.accepted -= 1
    assert Scheduler._draft(owner, slot, 100) == []  # type: ignore[arg-type]


def test_a_copy_goes_on_from_where_it_started_not_from_a_later_look_alike() -> None:
    # Two cards of the same markup, a name (9, 8) at the start and a different token after each
    # (10, 20). The reply copies card one: past its name, "4 5 6" last occurred in card two, but
    # the copy started in card one goes on there, to 10.
    card_one, card_two = [1, 2, 9, 4, 5, 6, 7, 10], [1, 2, 8, 4, 5, 6, 7, 20]
    lookup = NgramLookup([*card_one, *card_two, 0, 1, 2, 9], ngram_max=3, ngram_min=2)
    assert lookup.draft(3) == [4, 5, 6]  # "2 9" occurred only in card one
    for token in (4, 5, 6):
        lookup.add(token)
    assert lookup.draft(2) == [7, 10]  # not card two's [7, 20]
    assert NgramLookup([*card_one, *card_two, 0, 1, 2, 9, 4, 5, 6], ngram_max=3, ngram_min=2).draft(2) == [7, 20]


def test_a_copy_that_stops_matching_is_dropped() -> None:
    lookup = NgramLookup([1, 2, 3, 4, 5, 6, 1, 2], ngram_max=3, ngram_min=2)
    assert lookup.draft(2) == [3, 4]
    lookup.add(3)
    lookup.add(7)  # not the 4 the copy expected
    assert lookup.draft(4) == []  # "3 7" occurred nowhere before
    lookup.add(5)
    lookup.add(6)
    assert lookup.draft(2) == [1, 2]  # "5 6" is found afresh


def test_a_whole_page_copy_is_drafted_almost_entirely() -> None:
    # bench.lookup_replay's replay with the scheduler's draft lengths, on a page of repeated cards:
    # 24 tokens of the same markup and a name of its own each, so the latest occurrence of a
    # 12-token tail of markup is another card's.
    from bench.lookup_replay import replay

    def card(n: int) -> list[int]:
        return [*range(1, 25), 1000 + n]

    page = [token for n in range(30) for token in card(n)]
    reply = [*page[:5], 4242, *page[6:]]  # one token changed near the top
    result = replay([900, *page, 901], reply, draft_max=48)
    assert result["accepted"] / result["drafted"] > 0.95
    assert result["steps"] < len(reply) / 10
