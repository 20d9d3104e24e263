"""The embedded default dataset: latent-factor ratings with popularity skew and factor-driven item texts.

:func:`synthetic_population` draws the same kind of ratings for populations of millions of users.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedrec.data.dataset import Dataset, Interactions
from fedrec.errors import FedrecError

if TYPE_CHECKING:  # fedrec.federated imports fedrec.data: import ClientData where it is used
    from fedrec.federated.cohort import ClientData

# Each latent dimension has a genre word for its positive and for its negative direction, so an
# item's text says where its factor vector points and text models can learn from it.
_POSITIVE = (
    "space", "romance", "comedy", "war", "mystery", "horror", "music", "sports", "fantasy", "crime",
    "western", "history", "animation", "documentary", "thriller", "adventure",
)
_NEGATIVE = (
    "everyday", "heartbreak", "tragedy", "peace", "slice-of-life", "family", "silent", "politics",
    "realism", "courtroom", "urban", "future", "live-action", "fiction", "melodrama", "chamber",
)
_ADJECTIVES = (
    "Silent", "Golden", "Broken", "Hidden", "Last", "Crimson", "Endless", "Lonely", "Burning", "Frozen",
    "Wild", "Secret", "Distant", "Midnight", "Electric", "Quiet", "Fallen", "Bright", "Savage", "Gentle",
)
_NOUNS = (
    "River", "Empire", "Garden", "Mirror", "Horizon", "Station", "Kingdom", "Harbor", "Forest", "Signal",
    "Bridge", "Desert", "Machine", "Orchard", "Lantern", "Voyage", "Frontier", "Island", "Letter", "Storm",
)
_START = 946_684_800  # 2000-01-01 UTC
_SPAN = 3 * 365 * 86_400  # users start within three years
_MEAN_GAP = 2 * 86_400  # two days between a user's ratings on average
_SELECTION_AFFINITY = 0.5  # users pick items they like somewhat more often (missing-not-at-random)
_CHUNK = 1 << 21  # entries of the user x item score matrix built at once


def _genre_word(dim: int, sign: float) -> str:
    words = _POSITIVE if sign >= 0 else _NEGATIVE
    word = words[dim % len(words)]
    return word if dim < len(words) else f"{word}-{dim // len(words) + 1}"


def make_synthetic(
    num_users: int = 1000,
    num_items: int = 800,
    dim: int = 8,
    mean_interactions: float = 40.0,
    popularity_exponent: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
    min_per_user: int = 5,
) -> Dataset:
    """A deterministic synthetic explicit-rating dataset (ratings 1..5), fully determined by ``seed``.

    rating = round(clip(mu + b_u + b_i + <p_u, q_i> + noise * eps, 1, 5)); which items a user rates is
    drawn without replacement with weights ∝ popularity_rank^-exponent (and a mild preference for liked
    items); per-user counts are lognormal with the given mean, within [min_per_user, num_items // 2].
    """
    _validate(num_users, num_items, dim, mean_interactions, popularity_exponent, noise, min_per_user)
    rng = np.random.default_rng(seed)
    scale = (0.6 / dim) ** 0.25  # <p, q> then has variance ~0.6
    p = rng.normal(0.0, scale, size=(num_users, dim))
    q = rng.normal(0.0, scale, size=(num_items, dim))
    user_bias = rng.normal(0.0, 0.3, size=num_users)
    item_bias = rng.normal(0.0, 0.4, size=num_items)
    mu = 3.5

    ranks = rng.permutation(num_items) + 1
    log_popularity = -popularity_exponent * np.log(ranks)
    sigma = 0.8
    drawn = rng.lognormal(np.log(mean_interactions) - sigma**2 / 2, sigma, size=num_users)
    counts = np.clip(np.rint(drawn), min_per_user, num_items // 2).astype(np.int64)

    users_list, items_list = [], []
    step = max(1, _CHUNK // num_items)
    for start in range(0, num_users, step):
        stop = min(num_users, start + step)
        affinity = p[start:stop] @ q.T
        gumbel = rng.gumbel(size=(stop - start, num_items))
        keys = log_popularity[None, :] + _SELECTION_AFFINITY * affinity + gumbel
        # Gumbel-top-k: the k largest keys are a weighted sample without replacement.
        kmax = int(counts[start:stop].max())
        top = np.argpartition(-keys, kmax - 1, axis=1)[:, :kmax]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1), 1)
        take = np.arange(kmax)[None, :] < counts[start:stop, None]
        users_list.append(np.repeat(np.arange(start, stop), counts[start:stop]))
        items_list.append(order[take])
    users = np.concatenate(users_list).astype(np.int64)
    items = np.concatenate(items_list).astype(np.int64)

    raw = mu + user_bias[users] + item_bias[items] + np.einsum("nd,nd->n", p[users], q[items])
    raw += noise * rng.standard_normal(len(users))
    ratings = np.clip(np.rint(raw), 1, 5).astype(np.float32)

    # Shuffle each user's items into a random time order, then give strictly increasing times.
    order = np.lexsort((rng.random(len(users)), users))
    users, items, ratings = users[order], items[order], ratings[order]
    gaps = 1 + np.floor(rng.exponential(_MEAN_GAP, size=len(users))).astype(np.int64)
    first = np.r_[0, np.cumsum(counts)[:-1]]
    starts = _START + rng.integers(0, _SPAN, size=num_users)
    cumulative = np.cumsum(gaps)
    within = cumulative - cumulative[first][users] + gaps[first][users]  # restart the sum per user
    timestamps = starts[users] + within

    titles, texts = _item_texts(rng, q, item_bias)
    region_dims = min(4, dim)
    region = np.argmax(p[:, :region_dims], axis=1)
    return Dataset(
        name="synthetic",
        interactions=Interactions(users, items, ratings, timestamps.astype(np.int64)),
        user_ids=np.asarray([str(u + 1) for u in range(num_users)], dtype=str),
        item_ids=np.asarray([str(i + 1) for i in range(num_items)], dtype=str),
        item_titles=titles,
        item_texts=texts,
        rating_range=(1.0, 5.0),
        user_features={"region": np.asarray([f"region-{r}" for r in region], dtype=str)},
    )


def _item_texts(rng: np.random.Generator, q: np.ndarray, item_bias: np.ndarray) -> tuple[list[str], list[str]]:
    """Made-up titles plus texts naming the item's two strongest factor directions as genres."""
    num_items = len(q)
    adjectives = rng.integers(0, len(_ADJECTIVES), size=num_items)
    nouns = rng.integers(0, len(_NOUNS), size=num_items)
    years = rng.integers(1950, 2021, size=num_items)
    strongest = np.argsort(-np.abs(q), axis=1)[:, :2]
    low, high = np.quantile(item_bias, [0.2, 0.8]) if num_items else (0.0, 0.0)
    titles, texts = [], []
    seen: dict[str, int] = {}
    for i in range(num_items):
        title = f"The {_ADJECTIVES[adjectives[i]]} {_NOUNS[nouns[i]]}"
        seen[title] = seen.get(title, 0) + 1
        if seen[title] > 1:
            title = f"{title} {seen[title]}"
        genres = [_genre_word(int(d), q[i, d]) for d in strongest[i]]
        text = f"{title} ({years[i]}). Genres: {', '.join(genres)}."
        if item_bias[i] >= high:
            text += " Critically acclaimed."
        elif item_bias[i] <= low:
            text += " Poorly reviewed."
        titles.append(title)
        texts.append(text)
    return titles, texts


def _validate(
    num_users: int, num_items: int, dim: int, mean: float, exponent: float, noise: float, min_per_user: int
) -> None:
    checks = [
        (num_users >= 1, f"num_users={num_users} must be at least 1"),
        (num_items >= 2, f"num_items={num_items} must be at least 2"),
        (dim >= 1, f"dim={dim} must be at least 1"),
        (mean > 0, f"mean_interactions={mean} must be positive"),
        (exponent >= 0, f"popularity_exponent={exponent} must be >= 0"),
        (noise >= 0, f"noise={noise} must be >= 0"),
        (min_per_user >= 1, f"min_per_user={min_per_user} must be at least 1"),
        (
            min_per_user <= num_items // 2,
            f"min_per_user={min_per_user} exceeds num_items // 2 = {num_items // 2}; lower it or add items",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise FedrecError(f"synthetic dataset: {message}")


_POPULATION_CHUNK = 1 << 15  # users whose candidate items are drawn at once by synthetic_population


def synthetic_population(
    num_users: int,
    num_items: int = 800,
    dim: int = 8,
    mean_interactions: float = 40.0,
    popularity_exponent: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
    min_per_user: int = 5,
) -> ClientData:
    """A large synthetic population as training data (client k = user k), deterministic for ``seed``.

    Time and memory grow with the interactions, not users x items (10^6 users with 40 ratings each:
    about 30 CPU seconds, under 2 GB), for the scale benchmark. The rating model and per-user counts are
    those of :func:`make_synthetic`; which items a user rates is drawn differently, since a Gumbel key for
    every (user, item) pair is what makes make_synthetic cost users x items: each user draws 2 n + 8
    candidates ∝ popularity_rank^-exponent with replacement, a distinct candidate's key is its affinity with
    the user (weighted as in make_synthetic) plus Gumbel noise, and the user keeps the n largest. The few
    heavy users left with fewer than n distinct candidates get make_synthetic's exact Gumbel-top-n.
    """
    from fedrec.federated.cohort import ClientData

    _validate(num_users, num_items, dim, mean_interactions, popularity_exponent, noise, min_per_user)
    rng = np.random.default_rng(seed)
    scale = (0.6 / dim) ** 0.25
    p = rng.normal(0.0, scale, size=(num_users, dim)).astype(np.float32)
    q = rng.normal(0.0, scale, size=(num_items, dim)).astype(np.float32)
    user_bias = rng.normal(0.0, 0.3, size=num_users).astype(np.float32)
    item_bias = rng.normal(0.0, 0.4, size=num_items).astype(np.float32)
    popularity = (rng.permutation(num_items) + 1.0) ** -popularity_exponent
    cdf = np.cumsum(popularity / popularity.sum())
    sigma = 0.8
    drawn = rng.lognormal(np.log(mean_interactions) - sigma**2 / 2, sigma, size=num_users)
    counts = np.clip(np.rint(drawn), min_per_user, num_items // 2).astype(np.int64)

    items_parts, ratings_parts = [], []
    for start in range(0, num_users, _POPULATION_CHUNK):
        stop = min(num_users, start + _POPULATION_CHUNK)
        items = _draw_distinct_items(rng, p[start:stop], q, counts[start:stop], cdf)
        users = np.repeat(np.arange(start, stop), counts[start:stop])
        raw = 3.5 + user_bias[users] + item_bias[items] + np.einsum("nd,nd->n", p[users], q[items])
        raw += noise * rng.standard_normal(len(users)).astype(np.float32)
        items_parts.append(items)
        ratings_parts.append(np.clip(np.rint(raw), 1, 5).astype(np.float32))
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return ClientData(offsets=offsets, users=np.repeat(np.arange(num_users, dtype=np.int64), counts),
                      items=np.concatenate(items_parts), targets=np.concatenate(ratings_parts))


def _draw_distinct_items(rng: np.random.Generator, p: np.ndarray, q: np.ndarray, counts: np.ndarray,
                         cdf: np.ndarray) -> np.ndarray:
    """``counts[u]`` distinct items for each of these users, concatenated by user (see synthetic_population)."""
    num_items = len(q)
    want = 2 * counts + 8  # enough that almost every user gets counts[u] distinct candidates
    drawn = np.minimum(np.searchsorted(cdf, rng.random(int(want.sum())), side="right"), num_items - 1)
    pair = np.sort(np.repeat(np.arange(len(counts)), want) * num_items + drawn)
    pair = pair[np.r_[True, pair[1:] != pair[:-1]]]  # distinct (user, item) pairs, by user
    owner, items = pair // num_items, pair % num_items
    keys = _SELECTION_AFFINITY * np.einsum("nd,nd->n", p[owner], q[items]) + rng.gumbel(size=len(pair))
    # by user, then largest key first (one float sort: the user index plus a number in (0, 1) falling with the key)
    order = np.argsort(owner + 0.5 * (1.0 - np.tanh(keys / 8.0)))
    owner, items = owner[order], items[order]
    distinct = np.bincount(owner, minlength=len(counts))
    first = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(distinct[:-1], out=first[1:])
    enough = distinct >= counts
    take = enough[owner] & (np.arange(len(owner)) - first[owner] < counts[owner])
    done_users, done_items = [owner[take]], [items[take]]
    # Users with too few distinct candidates (heavy users): an exact Gumbel-top-k over the catalogue.
    log_popularity = np.log(np.diff(cdf, prepend=0.0).clip(min=1e-300))
    short = np.flatnonzero(~enough)
    step = max(1, _CHUNK // num_items)
    for begin in range(0, len(short), step):
        users = short[begin:begin + step]
        keys = log_popularity[None, :] + _SELECTION_AFFINITY * (p[users] @ q.T) + rng.gumbel(size=(len(users), num_items))
        order = np.argsort(-keys, axis=1)
        take = np.arange(num_items)[None, :] < counts[users, None]
        done_users.append(np.repeat(users, counts[users]))
        done_items.append(order[take])
    users = np.concatenate(done_users)
    return np.concatenate(done_items)[np.argsort(users, kind="stable")].astype(np.int64)
