"""The store's knowledge base: Markdown articles, indexed in PostgreSQL, searched per question.

The articles in KNOWLEDGE_DIR are the source of truth. `sync_knowledge` splits each one by its
headings into chunks and mirrors them into the knowledge tables (sql/0002_knowledge.sql),
touching only files whose bytes changed. Beside the folder (in its parent), two optional files
of the store: `answers.toml` (curated answers, each indexed as a one-chunk "article"
`answers.toml#<id>`) and `synonyms.toml` (shopper words, and which countries a shipping region
covers). The same rule holds for every site: the default site's folder is KNOWLEDGE_DIR,
another's the DIR of `sites knowledge sync KEY DIR`. Everything indexed (articles, chunks,
curated answers, the words for typo correction, synonyms, regions) belongs to one site, and a
sync touches only its site's rows. The search itself is app/knowledge_search.py.

Languages: the articles at the top of the folder are English. A subfolder named after one of
the languages the service detects (app/language.py: `de/`, `fr/`, `es/`, `hi/`; `en/` is
English too) holds that language's articles, and `answers.<code>.toml` beside `answers.toml`
that language's curated answers. Every chunk keeps its language and is stemmed with its
language's text search configuration (sql/0013_knowledge_languages.sql).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.language import ENGLISH, LANGUAGES
from app.sites import DEFAULT_SITE_ID

DEFAULT_KNOWLEDGE_DIR = Path(__file__).parent / "store" / "knowledge"

# pg_advisory_xact_lock key ("knowledg" in ASCII). Instances that start together queue on
# this lock, so each sync sees the previous one's committed rows and finds nothing to do.
SYNC_LOCK_KEY = 0x6B6E6F776C656467

ANSWERS_FILE = "answers.toml"
SYNONYMS_FILE = "synonyms.toml"
# Curated answers written in the back office are indexed under these paths (app/curated_answers.py);
# they are not files, so a sync of the folder leaves them alone.
BACK_OFFICE_PREFIX = "back-office#"


class KnowledgeError(Exception):
    """The knowledge folder or one of its articles cannot be read."""


@dataclass(frozen=True)
class KnowledgeChunk:
    title: str
    heading: str
    text: str
    path: str
    score: float
    kind: str = "article"  # or "answer": a curated answer from answers.toml
    link: str | None = None  # a curated answer's article, for more
    link_title: str | None = None
    coverage: float = 1.0  # the share of the question's weight this chunk matches
    heading_coverage: float = 1.0  # ... in its title, heading or example questions alone
    examples: str = ""  # a curated answer's example questions (what the search matched)

    @property
    def label(self) -> str:
        """ "Returns and exchanges: How to start a return", or the title alone for an intro."""
        return self.title if self.heading == self.title else f"{self.title}: {self.heading}"


@dataclass(frozen=True)
class ArticleSection:
    heading: str
    body: str
    examples: str = ""  # a curated answer's example questions, one per line


@dataclass(frozen=True)
class Article:
    path: str
    title: str
    content_hash: str
    sections: tuple[ArticleSection, ...]
    kind: str = "article"
    link: str | None = None
    language: str = ENGLISH  # ISO 639-1: the language folder or answers file it came from


@dataclass(frozen=True)
class StoreWords:
    """The store's synonyms file: shopper phrase -> article words, region -> country codes."""

    synonyms: dict[str, str] = field(default_factory=dict)
    regions: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncReport:
    added: tuple[str, ...]
    updated: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: int
    words_changed: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed or self.words_changed)

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.removed)} removed, {self.unchanged} unchanged"
            + (f"; {SYNONYMS_FILE} changed" if self.words_changed else "")
        )


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def parse_article(path: str, text: str, content_hash: str = "") -> Article:
    """Split an article into sections at its headings.

    The first level-1 heading is the title (the file name stands in when there is none); every
    other heading starts a section. Text before the first section becomes a section headed by
    the title, so an article without headings is still one searchable chunk.
    """
    title: str | None = None
    sections: list[ArticleSection] = []
    heading: str | None = None
    body_lines: list[str] = []
    in_fence = False

    def close_section() -> None:
        body = "\n".join(body_lines).strip()
        if body:
            sections.append(ArticleSection(heading or "", body))
        body_lines.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match is None:
            body_lines.append(line)
        elif title is None and match.group(1) == "#" and heading is None and not sections:
            title = match.group(2)
        else:
            close_section()
            heading = match.group(2)
    close_section()

    title = title or Path(path).stem.replace("-", " ").replace("_", " ").capitalize()
    sections = [ArticleSection(section.heading or title, section.body) for section in sections]
    return Article(path, title, content_hash, tuple(sections))


def read_articles(knowledge_dir: Path) -> list[Article]:
    """Every *.md file under `knowledge_dir`, parsed, in a stable order."""
    if not knowledge_dir.is_dir():
        raise KnowledgeError(f"knowledge folder {knowledge_dir} does not exist or is not a folder")
    articles = []
    for file in sorted(knowledge_dir.rglob("*.md")):
        if not file.is_file():
            continue
        raw = file.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise KnowledgeError(f"knowledge article {file}: the file is not UTF-8 text") from exc
        # PostgreSQL text cannot hold NUL, so refuse the file here rather than fail in the INSERT.
        if "\x00" in text:
            raise KnowledgeError(f"knowledge article {file}: the file contains a NUL character")
        relative = file.relative_to(knowledge_dir).as_posix()
        article = parse_article(relative, text, hashlib.sha256(raw).hexdigest())
        articles.append(replace(article, language=article_language(relative)))
    for language, answers_file in answers_files(knowledge_dir.parent):
        articles += [replace(answer, language=language)
                     for answer in read_curated_answers(answers_file)]
    return articles


def article_language(relative_path: str) -> str:
    """The language of an article by its place in the folder: `de/returns.md` is German; a
    file at the top, or in a folder not named after a language, is English."""
    first = relative_path.split("/", 1)[0]
    return first if "/" in relative_path and first in LANGUAGES else ENGLISH


def answers_files(store_dir: Path) -> list[tuple[str, Path]]:
    """(language, file) for answers.toml (English) and each answers.<code>.toml present."""
    files = [(ENGLISH, store_dir / ANSWERS_FILE)]
    stem, suffix = ANSWERS_FILE.rsplit(".", 1)
    for code in LANGUAGES:
        if code != ENGLISH:
            files.append((code, store_dir / f"{stem}.{code}.{suffix}"))
    return [(language, path) for language, path in files if path.is_file()]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise KnowledgeError(f"{path}: the file is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise KnowledgeError(f"{path}: not valid TOML: {exc}") from exc


_ANSWER_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def read_curated_answers(path: Path) -> list[Article]:
    """The entries of answers.toml, each as a one-chunk article; none when there is no file.

    An entry: `id` (lower case, dashes), `title`, `questions` (examples of how shoppers ask),
    `answer` (given word for word), optionally `article` (the article to read for more).
    """
    if not path.is_file():
        return []
    entries = _read_toml(path).get("answer", [])
    if not isinstance(entries, list):
        raise KnowledgeError(f"{path}: entries must be [[answer]] tables")
    answers: list[Article] = []
    seen: set[str] = set()
    for number, entry in enumerate(entries, 1):
        where = f"{path}: answer {number}"
        if not isinstance(entry, dict):
            raise KnowledgeError(f"{where} must be a table")
        unknown = set(entry) - {"id", "title", "questions", "answer", "article"}
        if unknown:
            raise KnowledgeError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        answer_id, title, answer = entry.get("id"), entry.get("title"), entry.get("answer")
        questions, link = entry.get("questions"), entry.get("article")
        if not isinstance(answer_id, str) or not _ANSWER_ID.match(answer_id):
            raise KnowledgeError(f"{where}: 'id' must be lower-case letters, digits and dashes")
        if answer_id in seen:
            raise KnowledgeError(f"{where}: the id {answer_id!r} is used twice")
        seen.add(answer_id)
        for name, value in (("title", title), ("answer", answer)):
            if not isinstance(value, str) or not value.strip() or "\x00" in value:
                raise KnowledgeError(f"{where} ({answer_id}): {name!r} must be non-empty text")
        if not isinstance(questions, list) or not questions or not all(
                isinstance(q, str) and q.strip() for q in questions):
            raise KnowledgeError(f"{where} ({answer_id}): 'questions' must be a list of text")
        if link is not None and not isinstance(link, str):
            raise KnowledgeError(f"{where} ({answer_id}): 'article' must be a file name")
        assert isinstance(title, str) and isinstance(answer, str)
        examples = "\n".join(q.strip() for q in questions)
        content_hash = hashlib.sha256(
            f"{title}\n{examples}\n{answer}\n{link}".encode()).hexdigest()
        answers.append(Article(
            f"{path.name}#{answer_id}", title.strip(), content_hash,
            (ArticleSection(title.strip(), " ".join(answer.split()), examples),),
            kind="answer", link=link))
    return answers


def read_store_words(knowledge_dir: Path) -> StoreWords:
    """synonyms.toml beside the knowledge folder: `[synonyms]` "shopper words" = "article
    words", and `[regions]` Region = ["country codes"]; empty when there is no file."""
    path = knowledge_dir.parent / SYNONYMS_FILE
    if not path.is_file():
        return StoreWords()
    document = _read_toml(path)
    synonyms = document.get("synonyms", {})
    regions = document.get("regions", {})
    if not isinstance(synonyms, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in synonyms.items()):
        raise KnowledgeError(f'{path}: [synonyms] must map text to text: "money back" = "refund"')
    if not isinstance(regions, dict) or not all(
            isinstance(v, list) and all(isinstance(c, str) and len(c) == 2 for c in v)
            for v in regions.values()):
        raise KnowledgeError(f'{path}: [regions] must map a region to country codes: '
                             'Europe = ["FR", "DE"]')
    return StoreWords(
        {" ".join(k.lower().split()): " ".join(v.lower().split()) for k, v in synonyms.items()},
        {name: tuple(code.upper() for code in codes) for name, codes in regions.items()})


async def sync_knowledge(pool: AsyncConnectionPool, knowledge_dir: Path,
                         site_id: int = DEFAULT_SITE_ID) -> SyncReport:
    """Make the site's index match the folder: index new and changed files, drop deleted ones.
    Other sites' articles are never touched.

    Safe to run from several instances at once: the whole sync is one transaction holding an
    advisory lock, so syncs run one after another and all but the first find nothing to do.
    A sync that changes anything bumps the site's revision, so every instance's search (and
    the retrievals it keeps) sees the change on its next question, not seconds later.
    """
    articles = read_articles(knowledge_dir)
    store_words = read_store_words(knowledge_dir)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SYNC_LOCK_KEY])
        cursor = await conn.execute(
            "SELECT path, content_hash FROM knowledge_articles WHERE site_id = %s"
            " AND NOT starts_with(path, %s)", [site_id, BACK_OFFICE_PREFIX])
        indexed = {path: content_hash for path, content_hash in await cursor.fetchall()}

        on_disk = {article.path for article in articles}
        removed = sorted(path for path in indexed if path not in on_disk)
        if removed:
            await conn.execute("DELETE FROM knowledge_articles WHERE site_id = %s"
                               " AND path = ANY(%s)", [site_id, removed])

        added: list[str] = []
        updated: list[str] = []
        for article in articles:
            previous_hash = indexed.get(article.path)
            if previous_hash == article.content_hash:
                continue
            await _index_article(conn, article, site_id)
            (added if previous_hash is None else updated).append(article.path)
        if added or updated or removed:
            await _index_words(conn, site_id)
        words_changed = await _index_store_words(conn, store_words, site_id)
        if added or updated or removed or words_changed:
            await bump_revision(conn, site_id)

    unchanged = len(articles) - len(added) - len(updated)
    return SyncReport(tuple(added), tuple(updated), tuple(removed), unchanged, words_changed)


async def bump_revision(conn: AsyncConnection, site_id: int) -> None:
    """Mark the site's knowledge changed: every search reads this row on every question
    (app/knowledge_search.py), so every instance sees the change on its next one."""
    await conn.execute(
        "INSERT INTO knowledge_revisions (site_id, revision) VALUES (%s, 1)"
        " ON CONFLICT (site_id) DO UPDATE SET revision = knowledge_revisions.revision + 1",
        (site_id,))


async def _index_words(conn: AsyncConnection, site_id: int) -> None:
    """Every word of the site's index, unstemmed, for typo correction by trigram similarity;
    per language, so a German word is never "corrected" into an English one."""
    await conn.execute("DELETE FROM knowledge_words WHERE site_id = %s", [site_id])
    await conn.execute(
        """
        INSERT INTO knowledge_words (site_id, language, word)
        SELECT DISTINCT %(site_id)s::bigint, language, word
        FROM knowledge_chunks,
             unnest(tsvector_to_array(to_tsvector('simple', article_title || ' ' || heading
                                                  || ' ' || examples || ' ' || body))) AS word
        WHERE site_id = %(site_id)s AND word ~ '^[[:alpha:]]+$'
        """,
        {"site_id": site_id},
    )


async def _index_store_words(conn: AsyncConnection, store_words: StoreWords,
                             site_id: int) -> bool:
    """Mirror the site's synonyms.toml into its tables; True when they changed."""
    cursor = await conn.execute(
        "SELECT phrase, terms FROM knowledge_synonyms WHERE site_id = %s", [site_id])
    synonyms: dict[str, str] = dict(await cursor.fetchall())
    cursor = await conn.execute(
        "SELECT region, country_codes FROM knowledge_regions WHERE site_id = %s", [site_id])
    regions = {region: tuple(codes) for region, codes in await cursor.fetchall()}
    if synonyms == store_words.synonyms and regions == store_words.regions:
        return False
    await conn.execute("DELETE FROM knowledge_synonyms WHERE site_id = %s", [site_id])
    await conn.execute("DELETE FROM knowledge_regions WHERE site_id = %s", [site_id])
    async with conn.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO knowledge_synonyms (site_id, phrase, terms) VALUES (%s, %s, %s)",
            [(site_id, phrase, terms) for phrase, terms in store_words.synonyms.items()])
        await cursor.executemany(
            "INSERT INTO knowledge_regions (site_id, region, country_codes) VALUES (%s, %s, %s)",
            [(site_id, region, list(codes)) for region, codes in store_words.regions.items()])
    return True


async def _index_article(conn: AsyncConnection, article: Article, site_id: int) -> None:
    await conn.execute(
        """
        INSERT INTO knowledge_articles (site_id, path, title, content_hash) VALUES (%s, %s, %s, %s)
        ON CONFLICT (site_id, path) DO UPDATE
            SET title = EXCLUDED.title, content_hash = EXCLUDED.content_hash, indexed_at = now()
        """,
        [site_id, article.path, article.title, article.content_hash],
    )
    await conn.execute("DELETE FROM knowledge_chunks WHERE site_id = %s AND article_path = %s",
                       [site_id, article.path])
    async with conn.cursor() as cursor:
        await cursor.executemany(
            """
            INSERT INTO knowledge_chunks (site_id, article_path, position, article_title,
                                          heading, body, content_hash, kind, examples, link,
                                          language)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            """,
            [
                (
                    site_id,
                    article.path,
                    position,
                    article.title,
                    section.heading,
                    section.body,
                    hashlib.sha256(f"{section.heading}\n{section.body}".encode()).hexdigest(),
                    article.kind,
                    section.examples,
                    article.link,
                    article.language,
                )
                for position, section in enumerate(article.sections)
            ],
        )
