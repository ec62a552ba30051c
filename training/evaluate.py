"""Quality evaluation: AUC and KS, and a logistic-regression probe per scenario on frozen user embeddings.

Protocol (paper §4): embeddings are frozen; for each binary scenario a logistic regression is fitted on train
users and scored on test users. The regularisation strength is picked on val users once per (row, scenario);
each seed then refits on a stratified 80% draw of the train users, so the spread over seeds shows how much a
number moves with the training sample. Baseline embeddings (bag of items / genres, mean MiniLM vector) live
here too, so the benchmark and tests share one definition.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from training.data.scenarios import Scenario
from training.data.world import UserWorld

log = logging.getLogger(__name__)

C_GRID = (0.01, 0.1, 1.0, 10.0)


# ---- metrics -------------------------------------------------------------------------------------------------
def _check_classes(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"{what} needs both classes; got {n_pos} positives and {n_neg} negatives")
    return y


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC = P(score of a random positive > a random negative), ties counted half."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(_check_classes(y, "AUC"), np.asarray(score, np.float64)))


def ks(y: np.ndarray, score: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic: max over thresholds t of TPR(t) - FPR(t), predicting positive when score >= t."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(_check_classes(y, "KS"), np.asarray(score, np.float64), drop_intermediate=False)
    return float(max(0.0, (tpr - fpr).max()))  # roc_curve starts at t above every score: TPR = FPR = 0


def variance_shares(emb: np.ndarray) -> dict[str, float]:
    """Two-way decomposition of embeddings E [U users, S scenarios, D] around the grand mean:
    user = S * sum_u |mean_u - mean|^2, scenario = U * sum_s |mean_s - mean|^2, interaction = the rest; each as a
    share of the total sum of squares. "user" is how much of the spread says who the user is whatever the question;
    "scenario" how much is the question alone (the same for every user)."""
    e = np.asarray(emb, np.float64)
    u, s = e.shape[:2]
    grand = e.mean(axis=(0, 1))
    total = float(((e - grand) ** 2).sum())
    user = s * float(((e.mean(axis=1) - grand) ** 2).sum())
    scen = u * float(((e.mean(axis=0) - grand) ** 2).sum())
    if total <= 0:
        return {"user": 0.0, "scenario": 0.0, "interaction": 0.0}
    return {"user": user / total, "scenario": scen / total, "interaction": max(0.0, 1 - (user + scen) / total)}


def weighted_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one scorer under many reweightings of the same users at once (a bootstrap resample is a vector of
    counts): y, score [n]; weights [B, n] -> [B]. Ties count half, as in `auc`."""
    y = np.asarray(y).astype(bool)
    uniq, inv = np.unique(np.asarray(score, np.float64), return_inverse=True)  # groups of tied scores, ascending
    onehot = sp.csr_matrix((np.ones(len(inv)), (np.arange(len(inv)), inv)), shape=(len(inv), len(uniq)))
    w = np.asarray(weights, np.float64)
    neg = np.asarray((onehot.T @ (w * ~y).T).T)  # [B, G] negative weight per score group
    pos = np.asarray((onehot.T @ (w * y).T).T)  # [B, G]
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each group
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    return np.divide(num, den, out=np.full(len(w), np.nan), where=den > 0)


def bootstrap_counts(n: int, draws: int = 1000, seed: int = 0) -> np.ndarray:
    """[draws, n] multinomial counts: each row is one resample of n users with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap draws (NaN draws, a resample without both classes, are dropped)."""
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    a = (1 - level) / 2
    return float(np.quantile(x, a)), float(np.quantile(x, 1 - a))


# ---- probe ---------------------------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    scenario: str
    auc_mean: float
    auc_std: float
    ks_mean: float
    ks_std: float
    c: float  # chosen inverse regularisation strength
    n_train: int
    n_test: int
    aucs: list[float]
    kss: list[float]
    # the seed-0 fit's decision scores on the test users (what bootstrap intervals resample); not in the JSON
    test_users: np.ndarray | None = None
    test_y: np.ndarray | None = None
    test_score: np.ndarray | None = None
    # with several seeds, every seed's scores ([seeds, n_test]; row 0 is test_score): intervals resample their average
    test_scores: np.ndarray | None = None


def _fit(x, y, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler, StandardScaler

    scaler = MaxAbsScaler() if sp.issparse(x) else StandardScaler()
    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
    return make_pipeline(scaler, clf).fit(x, y)


def fit_probe(x, y, c: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The probe's fitted weights on dense x: (mean, scale, coef, intercept), decision = ((x - mean) / scale) @ coef
    + intercept (what training.tune's probe objective starts from)."""
    pipe = _fit(x, y, c, seed)
    scaler, clf = pipe[0], pipe[-1]
    return scaler.mean_, scaler.scale_, clf.coef_[0], float(clf.intercept_[0])


def _score(model, x) -> np.ndarray:
    return model.decision_function(x)


def _c_aucs(x, tr_u: np.ndarray, tr_y: np.ndarray, va_u: np.ndarray, va_y: np.ndarray) -> np.ndarray:
    """AUC on (va_u, va_y) of the fit on (tr_u, tr_y) for each C of C_GRID (both C choices score C with this)."""
    return np.array([auc(va_y, _score(_fit(x[tr_u], tr_y, c, 0), x[va_u])) for c in C_GRID])


def val_fit(x, tr_u: np.ndarray, tr_y: np.ndarray, va_u: np.ndarray, va_y: np.ndarray) -> tuple[float, float]:
    """(C, val AUC): the C of C_GRID whose fit on (tr_u, tr_y) has the best AUC on the val users, and that AUC
    (C_GRID[0] and nan if val is one class)."""
    if len(np.unique(va_y)) != 2:
        return C_GRID[0], float("nan")
    aucs = _c_aucs(x, tr_u, tr_y, va_u, va_y)
    k = int(np.argmax(aucs))  # the first C on ties
    return C_GRID[k], float(aucs[k])


def choose_c(x, tr_u: np.ndarray, tr_y: np.ndarray, va_u: np.ndarray, va_y: np.ndarray) -> float:
    """The C of C_GRID whose fit on (tr_u, tr_y) has the best AUC on the val users (the first C if val is one class)."""
    return val_fit(x, tr_u, tr_y, va_u, va_y)[0]


C_CHOICES = ("val", "cv")  # how probe() picks C: on the val users, or by k-fold over train + val users


def cv_choose_c(x, tr_u: np.ndarray, tr_y: np.ndarray, va_u: np.ndarray, va_y: np.ndarray, folds: int = 5,
                seed: int = 0) -> float:
    """The C of C_GRID with the best mean AUC over `folds` stratified folds of the train + val users (test users
    untouched). On the quality table's 300 val users alone the choice flips under bf16-sized changes of the
    embedding and moves a scenario's test AUC by up to 0.02 (docs/quality.md, "The probe's C"); averaged over
    1,300 users in folds it flips ten times less often. Falls back to the val choice when a class has fewer than
    `folds` users."""
    from sklearn.model_selection import StratifiedKFold

    users, y = np.concatenate([tr_u, va_u]), np.concatenate([tr_y, va_y]).astype(int)
    if np.bincount(y, minlength=2).min() < folds:
        return choose_c(x, tr_u, tr_y, va_u, va_y)
    score = sum(_c_aucs(x, users[fit_i], y[fit_i], users[held_i], y[held_i])
                for fit_i, held_i in StratifiedKFold(folds, shuffle=True, random_state=seed).split(users, y))
    return C_GRID[int(np.argmax(score))]  # the first C on ties


def val_auc(emb, world: UserWorld, scenario: Scenario) -> float:
    """The probe's val AUC with its chosen C (fit on the train users, scored on the val users; test users untouched):
    what model selection between two embeddings of one scenario may read."""
    x, (tr_u, tr_y), (va_u, va_y), _ = _labelled(emb, world, scenario)
    return val_fit(x, tr_u, tr_y, va_u, va_y)[1]


def stratified_subsets(y: np.ndarray, n: int, repeats: int, seed: int = 0) -> list[np.ndarray]:
    """`repeats` seeded draws of n positions of y without replacement, keeping the class balance (each class at
    least 2, so a probe and an AUC are defined). n >= len(y): one subset, everything. Pure function of
    (y, n, repeats, seed): every row of a label-budget table is fitted on the same subsets."""
    y = np.asarray(y).astype(bool)
    pos, neg = np.nonzero(y)[0], np.nonzero(~y)[0]
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"a label budget needs >= 2 users of each class; got {len(pos)} positives, "
                         f"{len(neg)} negatives")
    if n >= len(y):
        return [np.arange(len(y))]
    if n < 4:
        raise ValueError(f"label budget {n} is too small: at least 2 positives and 2 negatives are needed")
    k = int(np.clip(round(n * len(pos) / len(y)), 2, min(len(pos), n - 2)))
    out = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, n, r])
        out.append(np.sort(np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, n - k, replace=False)])))
    return out


def _labelled(emb, world: UserWorld, scenario: Scenario):
    """(x, (train users, labels), (val ...), (test ...)): the users of each split whose label is defined."""
    x = sp.csr_matrix(emb) if sp.issparse(emb) else np.asarray(emb)
    return x, *(scenario.labels(world, world.users(split)) for split in ("train", "val", "test"))


def _c_picker(c_choice: str):
    """The C choice `probe` and `probe_budget` share: choose_c ("val") or cv_choose_c ("cv")."""
    if c_choice not in C_CHOICES:
        raise ValueError(f"c_choice {c_choice!r} is not one of {C_CHOICES}")
    return cv_choose_c if c_choice == "cv" else choose_c


def probe_budget(emb, world: UserWorld, scenario: Scenario, n: int, repeats: int,
                 c_choice: str = "val") -> list[ProbeResult]:
    """Few-label probes: one per stratified subset of n labelled train users, scored on every test user. C per
    subset as in `probe`: on the val users ("val") or by 5-fold over the subset + the val users ("cv"; at the full
    budget the same choice as `probe`'s). The subsets depend only on the labels, never on the embedding."""
    pick = _c_picker(c_choice)
    x, (tr_u, tr_y), (va_u, va_y), (te_u, te_y) = _labelled(emb, world, scenario)
    out = []
    for keep in stratified_subsets(tr_y, n, repeats):
        c = pick(x, tr_u[keep], tr_y[keep], va_u, va_y)
        s = _score(_fit(x[tr_u[keep]], tr_y[keep], c, 0), x[te_u])
        a, k = auc(te_y, s), ks(te_y, s)
        out.append(ProbeResult(scenario.name, a, 0.0, k, 0.0, c, len(keep), len(te_u), [a], [k], te_u, te_y, s))
    return out


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA of two embeddings of the same users ([n, d1], [n, d2]): 1 when one is a rotation / scaling /
    shift of the other, ~0 when their user geometries are unrelated. 1 - CKA(zero-shot, static) is how much a
    scenario query changes *which* user differences the embedding keeps (a query that only shifts gives 0)."""
    a = np.asarray(a, np.float64) - np.mean(a, axis=0)
    b = np.asarray(b, np.float64) - np.mean(b, axis=0)
    den = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(np.linalg.norm(a.T @ b) ** 2 / den) if den > 0 else float("nan")


def probe(emb, world: UserWorld, scenario: Scenario, seeds: tuple[int, ...] = (0, 1, 2),
          subsample: float = 0.8, c_choice: str = "val") -> ProbeResult:
    """Linear probe of one scenario. `emb` is [n_users_total, d] (dense or sparse), indexed by user index.
    c_choice: "val" picks C on the val users (seed 0, all train users fitted), "cv" by 5-fold over train + val
    (cv_choose_c); either way the probe is fitted on the train users only and the test users stay untouched."""
    x, (tr_u, tr_y), (va_u, va_y), (te_u, te_y) = _labelled(emb, world, scenario)
    best_c = _c_picker(c_choice)(x, tr_u, tr_y, va_u, va_y)
    aucs, kss, scores = [], [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.choice(np.nonzero(tr_y == k)[0], int(round(subsample * (tr_y == k).sum())),
                                          replace=False) for k in (0, 1)])
        m = _fit(x[tr_u[keep]], tr_y[keep], best_c, seed)
        s = _score(m, x[te_u])
        scores.append(s)
        aucs.append(auc(te_y, s))
        kss.append(ks(te_y, s))
    return ProbeResult(scenario.name, float(np.mean(aucs)), float(np.std(aucs)), float(np.mean(kss)),
                       float(np.std(kss)), best_c, len(tr_u), len(te_u), aucs, kss, te_u, te_y, scores[0],
                       np.stack(scores) if len(scores) > 1 else None)


def evaluate_embeddings(emb, world: UserWorld, scenarios: list[Scenario], seeds: tuple[int, ...] = (0, 1, 2)
                        ) -> list[ProbeResult]:
    out = []
    for s in scenarios:
        r = probe(emb, world, s, seeds)
        log.info("probe scenario=%s auc=%.4f+-%.4f ks=%.4f+-%.4f C=%g", s.name, r.auc_mean, r.auc_std,
                 r.ks_mean, r.ks_std, r.c)
        out.append(r)
    return out


# ---- baselines: user vectors from the history window ---------------------------------------------------------
def bag_of_items(world: UserWorld) -> sp.csr_matrix:
    """[n_users, n_sources * n_items] sparse: which items (movies) the user put in each source (liked/neutral/...),
    L2-normalised per user. Bag of categories is appended (see bag_of_genres) so one row covers both. Any world
    with the rows interface (MovieLens' UserWorld, an event log's EventWorld)."""
    n_items, n_src = world.n_items, len(world.feature_spec.names)
    rows, cols = [], []
    for u, tl in world.timelines.items():
        h = tl.history
        src = world.source_of_row[h]
        ok = src >= 0
        rows.append(np.full(int(ok.sum()), u))
        cols.append(src[ok].astype(np.int64) * n_items + world.item_of_row[h][ok])
    rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
    m = sp.csr_matrix((np.ones(len(rows_a), np.float32), (rows_a, cols_a)), shape=(world.n_users, n_src * n_items))
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    norms[norms == 0] = 1.0
    m = sp.diags(1.0 / norms) @ m
    return sp.hstack([m, sp.csr_matrix(bag_of_genres(world))]).tocsr()


def bag_of_genres(world: UserWorld) -> np.ndarray:
    """[n_users, n_sources * n_categories + n_sources] category shares per source plus each source's share of
    events; the categories are the world's `category_names` (MovieLens: its 18 genres)."""
    n_src, names = len(world.feature_spec.names), world.category_names
    n_cat = len(names)
    c_idx = {g: i for i, g in enumerate(names)}
    out = np.zeros((world.n_users, n_src * n_cat + n_src), np.float32)
    for u, tl in world.timelines.items():
        h = tl.history
        for cats, s in zip(world.stats_columns(h)[3], world.source_of_row[h]):
            if s < 0:
                continue
            out[u, n_src * n_cat + s] += 1
            for g in cats:
                out[u, s * n_cat + c_idx[g]] += 1
        out[u] /= max(len(h), 1)
    return out


def mean_text_vector(world: UserWorld, vecs: np.ndarray, per_source: bool = False) -> np.ndarray:
    """Mean MiniLM vector of the user's history event texts: [n_users, 384], or one mean per source
    concatenated ([n_users, n_sources * 384]) when per_source (zeros for an empty source)."""
    n_src = len(world.feature_spec.names) if per_source else 1
    d = vecs.shape[1]
    out = np.zeros((world.n_users, n_src * d), np.float32)
    for u, tl in world.timelines.items():
        h = tl.history
        v = vecs[world.text_of_row[h]].astype(np.float32)
        if not per_source:
            out[u] = v.mean(0)
            continue
        src = world.source_of_row[h]
        for s in range(n_src):
            if (src == s).any():
                out[u, s * d:(s + 1) * d] = v[src == s].mean(0)
    return out
