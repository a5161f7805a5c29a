"""The knowledge base against the real PostgreSQL: articles split into chunks, a sync that is
idempotent and safe to run from several instances at once, retrieval measured on shopper
questions, and the answer framed from a chunk when there is no model."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from psycopg_pool import AsyncConnectionPool

from app import db
from app.knowledge import (
    DEFAULT_KNOWLEDGE_DIR,
    KnowledgeChunk,
    KnowledgeError,
    parse_article,
    read_articles,
    sync_knowledge,
)
from app.knowledge_search import KnowledgeSearch, Retrieval
from app.prompt import cited_sources, compose_answer
from app.store_profile import DEFAULT_PROFILE_PATH, load_profile

PROFILE = load_profile(DEFAULT_PROFILE_PATH)


async def search_knowledge(pool: AsyncConnectionPool, question: str,
                           limit: int = 3) -> list[KnowledgeChunk]:
    return list((await KnowledgeSearch(pool, PROFILE, limit=limit).search(question)).chunks)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """A pool on the test database with an empty knowledge index."""
    pool = db.create_pool(database_url, 4)
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute("TRUNCATE knowledge_articles CASCADE")
    yield pool
    await pool.close()


@pytest.fixture
def knowledge_dir(tmp_path: Path) -> Path:
    """A copy of the shipped articles that a test may edit."""
    folder = tmp_path / "knowledge"
    shutil.copytree(DEFAULT_KNOWLEDGE_DIR, folder)
    return folder


async def chunk_rows(pool: AsyncConnectionPool) -> list[tuple[int, str, int]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id, article_path, position FROM knowledge_chunks ORDER BY article_path, position")
        return await cursor.fetchall()


# -- splitting articles -----------------------------------------------------------------------


def test_an_article_is_split_at_its_headings() -> None:
    article = parse_article("returns.md", (
        "# Returns\n\nIntro line.\n\n## Window\n\n14 days.\n\n### Exceptions\n\nSale items.\n"
        "\n## Empty\n\n## How\n\n```\n# not a heading\n```\n"))
    assert article.title == "Returns"
    assert [(s.heading, s.body) for s in article.sections] == [
        ("Returns", "Intro line."),
        ("Window", "14 days."),
        ("Exceptions", "Sale items."),
        ("How", "```\n# not a heading\n```"),
    ]


def test_an_article_without_a_title_is_named_after_its_file() -> None:
    article = parse_article("faq/gift-wrapping.md", "We wrap gifts for free.")
    assert article.title == "Gift wrapping"
    assert [(s.heading, s.body) for s in article.sections] == [
        ("Gift wrapping", "We wrap gifts for free.")]


def test_every_shipped_article_has_a_title_and_several_sections() -> None:
    articles = [a for a in read_articles(DEFAULT_KNOWLEDGE_DIR) if a.kind == "article"]
    assert len(articles) >= 15
    for article in articles:
        assert article.title != article.path and len(article.sections) >= 3, article.path


def test_a_missing_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match=f"knowledge folder {tmp_path / 'nope'} does not"):
        read_articles(tmp_path / "nope")


def test_an_article_that_is_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "latin.md").write_bytes("# Café\n\ncr\xe8me".encode("latin-1"))
    with pytest.raises(KnowledgeError, match="latin.md: the file is not UTF-8"):
        read_articles(tmp_path)


# -- syncing ----------------------------------------------------------------------------------


async def test_a_second_sync_changes_nothing(pool: AsyncConnectionPool) -> None:
    first = await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    rows = await chunk_rows(pool)
    second = await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    assert len(first.added) == len(read_articles(DEFAULT_KNOWLEDGE_DIR))
    assert not second.changed and second.unchanged == len(first.added)
    assert await chunk_rows(pool) == rows


async def test_instances_syncing_together_index_each_chunk_once(
        pool: AsyncConnectionPool) -> None:
    reports = await asyncio.gather(*(sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
                                     for _ in range(3)))
    expected = sum(len(a.sections) for a in read_articles(DEFAULT_KNOWLEDGE_DIR))
    assert len(await chunk_rows(pool)) == expected
    # The advisory lock makes the syncs take turns: one indexes, the others find it done.
    assert sorted(bool(report.added) for report in reports) == [False, False, True]


async def test_a_changed_article_is_reindexed_and_only_it(
        pool: AsyncConnectionPool, knowledge_dir: Path) -> None:
    await sync_knowledge(pool, knowledge_dir)
    before = {(path, position): id_ for id_, path, position in await chunk_rows(pool)}
    returns = knowledge_dir / "returns.md"
    returns.write_text(returns.read_text().replace("within 14 days of the", "within 30 days of the")
                       + "\n## Returning a gift\n\nGifts can be returned for store credit.\n")

    report = await sync_knowledge(pool, knowledge_dir)

    assert (report.added, report.updated, report.removed) == ((), ("returns.md",), ())
    after = {(path, position): id_ for id_, path, position in await chunk_rows(pool)}
    assert {key: id_ for key, id_ in after.items() if key[0] != "returns.md"} == {
        key: id_ for key, id_ in before.items() if key[0] != "returns.md"}
    chunks = await search_knowledge(pool, "can i return a gift i received")
    assert chunks[0].heading == "Returning a gift"
    window = await search_knowledge(pool, "returns window")
    assert "within 30 days of the purchase date" in window[0].text


async def test_a_deleted_article_is_removed(pool: AsyncConnectionPool,
                                            knowledge_dir: Path) -> None:
    await sync_knowledge(pool, knowledge_dir)
    (knowledge_dir / "gift-cards.md").unlink()
    report = await sync_knowledge(pool, knowledge_dir)
    assert report.removed == ("gift-cards.md",)
    assert all(path != "gift-cards.md" for _, path, _ in await chunk_rows(pool))
    chunks = await search_knowledge(pool, "gift card balance")
    assert all(chunk.path != "gift-cards.md" for chunk in chunks)


async def test_articles_in_subfolders_are_indexed_by_relative_path(
        pool: AsyncConnectionPool, tmp_path: Path) -> None:
    (tmp_path / "faq").mkdir()
    (tmp_path / "faq" / "wrapping.md").write_text("# Gift wrapping\n\nWe wrap gifts for free.")
    await sync_knowledge(pool, tmp_path)
    chunks = await search_knowledge(pool, "do you wrap gifts")
    assert [(c.path, c.title) for c in chunks] == [("faq/wrapping.md", "Gift wrapping")]


# -- searching --------------------------------------------------------------------------------


async def test_results_are_best_first_and_capped(pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    chunks = await search_knowledge(pool, "when does the refund reach my bank", limit=2)
    assert len(chunks) == 2
    # Ranked by score and coverage together; the best is the refunds article or the curated
    # answer that links to it.
    assert chunks[0].score * chunks[0].coverage >= chunks[1].score * chunks[1].coverage * 0.99
    assert "refunds.md" in (chunks[0].path, chunks[0].link)


@pytest.mark.parametrize("question", [
    "", "???", "the and of", "hello there", "' or 1=1 --", "\"unclosed & | ! <->:*",
])
async def test_questions_with_nothing_to_search_find_nothing(pool: AsyncConnectionPool,
                                                             question: str) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    assert await search_knowledge(pool, question) == []


async def test_an_empty_index_finds_nothing(pool: AsyncConnectionPool) -> None:
    assert await search_knowledge(pool, "where is my parcel") == []


# -- answering from the knowledge base --------------------------------------------------------


def chunk(title: str, heading: str, text: str, path: str, score: float = 1.0,
          **extra: object) -> KnowledgeChunk:
    return KnowledgeChunk(title, heading, text, path, score, **extra)  # type: ignore[arg-type]


RETURNS_WINDOW = chunk(
    "Returns and exchanges", "Our returns window",
    "You can return items within 14 days of the purchase date shown on your order confirmation. "
    "Items must be unworn, unwashed and in their original condition.", "returns.md", 2.0)
REFUND_TIME = chunk(
    "Refunds", "When you will be refunded",
    "We inspect the items within 3 business days of receiving them, and then refund you "
    "straight away. You get an email when the refund is issued.", "refunds.md", 1.0)


def test_a_composed_answer_is_the_sentences_that_answer_and_one_line_for_more() -> None:
    retrieval = Retrieval("how many days do i have to return", (RETURNS_WINDOW,),
                          terms=(("days",), ("return",)))
    answer = compose_answer(PROFILE, retrieval)
    first, more = answer.text.split("\n\n")
    assert "14 days" in first and "Here is what" not in answer.text
    assert more == "More in our help centre: Returns and exchanges."
    assert PROFILE.contact_email not in answer.text  # no footer when the answer is found
    assert answer.sources == [{"title": "Returns and exchanges", "path": "returns.md"}]


def test_an_article_titled_as_a_question_keeps_its_own_question_mark() -> None:
    shipping = chunk("How much is shipping?", "Shipping costs",
                     "Shipping is free over $75 in the USA.", "shipping-cost.md", 2.0)
    retrieval = Retrieval("how much is shipping", (shipping,), terms=(("shipping",),))
    more = compose_answer(PROFILE, retrieval).text.split("\n\n")[1]
    assert more == "More in our help centre: How much is shipping?"


def test_a_two_part_question_is_answered_in_both_parts_and_lists_both_sources() -> None:
    retrieval = Retrieval("can i return it and how long does the refund take",
                          (RETURNS_WINDOW, REFUND_TIME), terms=(("return",), ("refund",)))
    answer = compose_answer(PROFILE, retrieval)
    assert "14 days" in answer.text and "3 business days" in answer.text
    assert [s["path"] for s in answer.sources] == ["returns.md", "refunds.md"]


def test_a_source_the_answer_did_not_use_is_not_listed() -> None:
    retrieval = Retrieval("how many days do i have to return", (RETURNS_WINDOW, REFUND_TIME),
                          terms=(("days",), ("return",)))
    assert compose_answer(PROFILE, retrieval).sources == [
        {"title": "Returns and exchanges", "path": "returns.md"}]


def test_a_question_about_one_order_gets_the_contact_footer() -> None:
    retrieval = Retrieval("my order SL-10442 never arrived", (REFUND_TIME,),
                          terms=(("order",), ("arrived",)))
    assert PROFILE.contact_email in compose_answer(PROFILE, retrieval).text


def test_a_close_curated_answer_is_given_word_for_word_with_its_entry_as_source() -> None:
    curated = chunk("How long do I have to return something?", "How long do I have to "
                    "return something?", "Within 14 days, unworn.", "answers.toml#return-window",
                    3.0, kind="answer", link="returns.md", link_title="Returns and exchanges")
    retrieval = Retrieval("return window?", (curated, RETURNS_WINDOW), curated=curated)
    answer = compose_answer(PROFILE, retrieval)
    assert answer.text == ("Within 14 days, unworn.\n\n"
                           "More in our help centre: Returns and exchanges.")
    assert answer.sources == [{"title": "How long do I have to return something?",
                               "path": "answers.toml#return-window"}]


def test_with_no_match_the_answer_gives_support_hours_and_contact() -> None:
    answer = compose_answer(PROFILE, Retrieval("tell me a joke", ()))
    assert "does not cover" in answer.text and answer.sources == []
    assert PROFILE.support_hours in answer.text and PROFILE.contact_email in answer.text
    assert PROFILE.contact_phone is not None and PROFILE.contact_phone in answer.text


def test_a_models_answer_lists_only_the_sources_it_cited_else_all_given() -> None:
    retrieval = Retrieval("return and refund", (RETURNS_WINDOW, REFUND_TIME))
    assert cited_sources(retrieval, "Refunds take 3 business days [2].") == [
        {"title": "Refunds", "path": "refunds.md"}]
    assert [s["path"] for s in cited_sources(retrieval, "No citation here.")] == [
        "returns.md", "refunds.md"]
    assert [s["path"] for s in cited_sources(retrieval, "Out of range [7].")] == [
        "returns.md", "refunds.md"]


# -- the index behind typos, synonyms, places and curated answers -------------------------------


async def test_a_typo_is_fixed_by_trigram_similarity(pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    retrieval = await KnowledgeSearch(pool, PROFILE).search("shiping cost")
    assert any("shipping" in group for group in retrieval.terms)
    assert retrieval.chunks[0].path in ("shipping.md", "answers.toml#shipping-cost")


async def test_a_city_maps_to_its_shipping_region(pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    search = KnowledgeSearch(pool, PROFILE)
    mumbai = await search.search("is shipping available in mumbai")
    assert [(p.country, p.region) for p in mumbai.places] == [("India", "India")]
    toronto = await search.search("do you ship to toronto")
    assert [(p.country, p.region) for p in toronto.places] == [("Canada", None)]
    assert "Canada" in compose_answer(PROFILE, toronto).text
    bavaria = await search.search("do you deliver to bavaria")
    assert [(p.country, p.region) for p in bavaria.places] == [("Germany", "Europe")]


async def test_a_city_gets_the_answer_on_where_the_store_ships_not_on_what_it_costs(
        pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    retrieval = await KnowledgeSearch(pool, PROFILE).search("is shipping available in mumbai")
    answer = compose_answer(PROFILE, retrieval)
    assert answer.sources[0]["path"] == "answers.toml#where-we-ship" or (
        answer.sources[0]["path"] == "shipping.md")
    assert "India" in answer.text and "$75" not in answer.text


async def test_a_place_alone_does_not_make_a_question_about_shipping(
        pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    retrieval = await KnowledgeSearch(pool, PROFILE).search("what is the capital of peru")
    assert not retrieval.found


async def test_a_word_the_articles_use_is_not_read_as_a_town(pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    search = KnowledgeSearch(pool, PROFILE)
    for question in ("when is your next sale", "how to store silk saree"):
        assert (await search.search(question)).places == ()


async def test_a_question_about_one_products_stock_or_price_finds_nothing(
        pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    search = KnowledgeSearch(pool, PROFILE)
    for question in ("is the madder red shawl in stock", "how much is the chanderi dupatta",
                     "do you have the indigo quilt in king size"):
        assert not (await search.search(question)).found, question
    for question in ("how much is the shipping to munich", "is the gift card refundable"):
        assert (await search.search(question)).found, question


async def test_swapped_letters_are_fixed_where_trigrams_miss_them(
        pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    retrieval = await KnowledgeSearch(pool, PROFILE).search("do i have to pay to retrun from usa")
    assert any("return" in group for group in retrieval.terms)


async def test_a_question_of_two_parts_is_answered_in_both(pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    retrieval = await KnowledgeSearch(pool, PROFILE).search(
        "can I return it and how long does the refund take")
    answer = compose_answer(PROFILE, retrieval)
    assert "14 days" in answer.text and "3 business days" in answer.text
    assert {source["path"] for source in answer.sources} >= {"answers.toml#refund-time"}


def test_an_answer_asked_how_long_holds_the_duration() -> None:
    warranty = chunk("Quality promise and warranty", "Our 6-month quality promise",
                     "We make our pieces to last. Every item is covered for 6 months from "
                     "delivery against defects in making.", "warranty.md")
    answer = compose_answer(PROFILE, Retrieval("how long is the warranty", (warranty,),
                                               terms=(("warranty",),)))
    assert "6 months" in answer.text


async def test_curated_answers_and_synonyms_are_reindexed_by_a_sync(
        pool: AsyncConnectionPool, tmp_path: Path) -> None:
    folder = tmp_path / "knowledge"
    shutil.copytree(DEFAULT_KNOWLEDGE_DIR, folder)
    (tmp_path / "answers.toml").write_text(
        '[[answer]]\nid = "gift-wrap"\ntitle = "Do you gift wrap?"\n'
        'questions = ["do you offer gift wrapping", "can you wrap it as a present"]\n'
        'answer = "Every order comes wrapped in a cotton bag at no extra cost."\n',
        encoding="utf-8")
    await sync_knowledge(pool, folder)
    search = KnowledgeSearch(pool, PROFILE, vocabulary_check_s=0)
    found = await search.search("do you offer gift wrapping?")
    assert found.curated is not None and found.curated.path == "answers.toml#gift-wrap"
    assert compose_answer(PROFILE, found).text == (
        "Every order comes wrapped in a cotton bag at no extra cost.")

    (tmp_path / "synonyms.toml").write_text('[synonyms]\nhamper = "gift card"\n',
                                            encoding="utf-8")
    report = await sync_knowledge(pool, folder)
    assert report.words_changed
    hamper = await search.search("can i buy a hamper")
    assert any("gift" in group for group in hamper.terms)


def test_a_wrong_curated_answer_is_an_error_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "knowledge"
    folder.mkdir()
    (tmp_path / "answers.toml").write_text('[[answer]]\nid = "Bad Id"\n', encoding="utf-8")
    with pytest.raises(KnowledgeError, match="answers.toml: answer 1: 'id'"):
        read_articles(folder)


async def test_an_order_number_does_not_make_a_question_out_of_scope(
        pool: AsyncConnectionPool) -> None:
    # A word the articles never use counts against a question, but a code with digits is the
    # shopper's order, not what the question is about.
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    plain = await search_knowledge(pool, "can i send back a kurta i dont like")
    with_order = await search_knowledge(pool, "can i send back a kurta i dont like, order 0f5019")
    assert plain and [c.path for c in with_order] == [c.path for c in plain]


async def test_a_thing_the_store_does_not_offer_is_not_the_article_sharing_one_word(
        pool: AsyncConnectionPool) -> None:
    # "Gift cards" shares "gift" with "gift wrapping" but is about another thing.
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    search = KnowledgeSearch(pool, PROFILE)
    for question in ("do you sell gift wrapping", "can you gift wrap my order"):
        assert not (await search.search(question)).found, question
    assert (await search.search("can i buy a gift card for my sister")).found


async def test_a_match_only_in_body_text_must_cover_more_of_the_question(
        pool: AsyncConnectionPool) -> None:
    # "app" is in a sentence on banking apps, "book" in "book a pickup": stray words.
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    search = KnowledgeSearch(pool, PROFILE)
    for question in ("do you have an iphone app", "can you book me a flight to delhi"):
        assert not (await search.search(question)).found, question


async def test_a_size_in_a_countrys_notation_is_a_size_not_the_country(
        pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    retrieval = await KnowledgeSearch(pool, PROFILE).search(
        "what size should i get im usually a US 8")
    assert retrieval.places == ()
    assert "M is 8-10" in compose_answer(PROFILE, retrieval).text


async def test_a_misspelt_ending_keeps_the_word_it_ends(pool: AsyncConnectionPool) -> None:
    # The stemmer leaves "deliverd" alone, so without "deliver" nothing would match it.
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    retrieval = await KnowledgeSearch(pool, PROFILE).search("it says deliverd")
    assert any("deliver" in group for group in retrieval.terms)


async def test_a_longer_word_holding_an_index_word_is_not_its_typo(
        pool: AsyncConnectionPool) -> None:
    await sync_knowledge(pool, DEFAULT_KNOWLEDGE_DIR)
    retrieval = await KnowledgeSearch(pool, PROFILE).search("do you do wholesale for boutiques")
    assert not any("whole" in group for group in retrieval.terms)
    assert not retrieval.found


def test_a_list_item_defining_the_word_asked_about_answers() -> None:
    statuses = chunk("Tracking your order", "What the order statuses mean",
                     "- Confirmed: we have your payment and the order is waiting to be packed.\n"
                     "- Packed: your items are checked and boxed.\n"
                     "- Shipped: the courier has collected the parcel.", "order-tracking.md")
    answer = compose_answer(PROFILE, Retrieval("what does packed mean", (statuses,),
                                               terms=(("packed",),)))
    assert answer.text.startswith("Packed: your items are checked and boxed.")


def test_one_short_sentence_goes_on_with_the_next_of_its_section() -> None:
    account = chunk("Your account and password", "Changing your email, name or address",
                    "Sign in and open My account to change your email address. Changing your "
                    "email address sends a confirmation link to the new address. Changes do "
                    "not affect orders already placed.", "account-password.md")
    answer = compose_answer(PROFILE, Retrieval("can i change my email address", (account,),
                                               terms=(("change",), ("email",), ("address",))))
    assert "confirmation link" in answer.text
