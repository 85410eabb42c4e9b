"""bench.stats against hand computations and closed forms (not against the code's own calls)."""

import math

import pytest

from bench import stats
from bench.errors import BenchError

# Rest-Wake paper (bench/studies/restwake/METHODS.md): per-run values as printed
VAL_ACC = {
    "sgd": [0.8263, 0.8311, 0.8384],
    "original": [0.8314, 0.8313, 0.8228],
    "improved": [0.8266, 0.8333, 0.8303],
}
PEAK_MB = {
    "sgd": ([370.66, 464.74, 465.07], 433.49, 52.34),
    "original": ([464.19, 464.82, 466.36], 465.12, 1.11),
    "improved": ([483.93, 487.37, 486.59], 485.96, 1.73),
}

# 95% two-sided t critical values. df=2 has the closed form t = sqrt(2 q^2 / (1 - q^2)), q = 0.95;
# df=3 is the table value 3.182446...
T975 = {2: math.sqrt(2 * 0.95**2 / (1 - 0.95**2)), 3: 3.182446305284263}


def p_two_sided(t, df):
    """Closed-form two-sided p of Student's t for df 2 and 3."""
    t = abs(t)
    if df == 2:
        return 1 - t / math.sqrt(2 + t * t)
    if df == 3:
        x = t / math.sqrt(3)
        return 1 - (2 / math.pi) * (x / (1 + x * x) + math.atan(x))
    raise ValueError(df)


def by_hand_paired(a, b):
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    return mean, sd, t, p_two_sided(t, n - 1)


def test_t_critical_closed_form_matches_table():
    assert T975[2] == pytest.approx(4.302653, abs=1e-6)  # table value 4.303


# ---------------------------------------------------------------------------------- summarize


def test_summarize_matches_formula():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0])
    std = math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3)
    assert s["n"] == 4
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(std, rel=1e-12)
    half = T975[3] * std / 2
    assert s["ci_low"] == pytest.approx(2.5 - half, rel=1e-12)
    assert s["ci_high"] == pytest.approx(2.5 + half, rel=1e-12)


def test_summarize_drops_nan_and_handles_small_n():
    s = stats.summarize([float("nan"), 1.0, None, 3.0, 2.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(2.0) and s["std"] == pytest.approx(1.0)
    assert s["ci_high"] - s["mean"] == pytest.approx(T975[2] / math.sqrt(3))
    one = stats.summarize([0.7])
    assert one["n"] == 1 and one["mean"] == 0.7
    assert all(math.isnan(one[k]) for k in ("std", "ci_low", "ci_high"))
    none = stats.summarize([float("nan")])
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["std"])
    assert stats.summarize([])["n"] == 0


def test_describe():
    d = stats.describe([3.0, float("nan"), 1.0, 2.0])
    assert d == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}


# -------------------------------------------------------------------------------- paired test


def test_paired_test_known_dataset():
    method = {0: 5.0, 1: 7.0, 2: 9.0, 3: 6.0}
    ref = {0: 4.0, 1: 5.0, 2: 8.0, 3: 6.0}
    r = stats.paired_test(method, ref)
    # differences 1, 2, 1, 0: mean 1, sd sqrt(2/3), t = 1 / (sd / 2) = sqrt(6)
    sd = math.sqrt(2 / 3)
    assert r["status"] == "tested"
    assert r["n_pairs"] == 4
    assert r["mean_method"] == pytest.approx(6.75)
    assert r["mean_reference"] == pytest.approx(5.75)
    assert r["mean_diff"] == pytest.approx(1.0)
    assert r["t"] == pytest.approx(math.sqrt(6), rel=1e-12)
    assert r["p"] == pytest.approx(p_two_sided(math.sqrt(6), 3), rel=1e-9)
    assert r["p"] == pytest.approx(0.0917211, abs=1e-7)
    assert r["d_z"] == pytest.approx(1 / sd, rel=1e-12)
    assert r["diff_ci_low"] == pytest.approx(1 - T975[3] * sd / 2, rel=1e-12)
    assert r["diff_ci_high"] == pytest.approx(1 + T975[3] * sd / 2, rel=1e-12)
    assert r["note"] == "" and r["dropped_seeds"] == []


def test_paired_direction_is_method_minus_reference():
    r = stats.paired_test({0: 1.0, 1: 2.0, 2: 2.5}, {0: 2.0, 1: 2.5, 2: 4.0})
    assert r["mean_diff"] < 0 and r["t"] < 0 and r["d_z"] < 0


@pytest.mark.parametrize(
    "a,b", [("original", "sgd"), ("improved", "sgd"), ("improved", "original")]
)
def test_restwake_paired_p_is_not_the_papers(a, b):
    seeds = range(3)
    r = stats.paired_test(dict(zip(seeds, VAL_ACC[a])), dict(zip(seeds, VAL_ACC[b])))
    mean, sd, t, p = by_hand_paired(VAL_ACC[a], VAL_ACC[b])
    assert r["status"] == "tested"
    assert r["mean_diff"] == pytest.approx(mean, rel=1e-9)
    assert r["t"] == pytest.approx(t, rel=1e-9)
    assert r["p"] == pytest.approx(p, rel=1e-9)
    assert r["d_z"] == pytest.approx(mean / sd, rel=1e-9)
    assert 0.61 < r["p"] < 0.71  # its own runs: pairwise p 0.62-0.70, never the paper's 0.0919
    assert abs(r["p"] - 0.0919) > 0.5


def test_fewer_than_three_pairs_not_testable_but_means_reported():
    r = stats.paired_test({0: 0.8, 1: 0.9}, {0: 0.7, 1: 0.75})
    assert r["status"] == "not testable (n=2 pairs < 3)"
    assert math.isnan(r["t"]) and math.isnan(r["p"])
    assert r["mean_method"] == pytest.approx(0.85)
    assert r["mean_reference"] == pytest.approx(0.725)
    assert r["mean_diff"] == pytest.approx(0.125)
    assert r["n_pairs"] == 2


def test_nan_pairs_dropped_and_noted():
    nan = float("nan")
    method = {0: 0.8, 1: nan, 2: 0.9, 3: 0.85}
    ref = {0: 0.7, 1: 0.72, 2: 0.75, 3: None}
    r = stats.paired_test(method, ref)
    assert r["n_pairs"] == 2
    assert r["dropped_seeds"] == [1, 3]
    assert "[1, 3]" in r["note"]
    assert r["status"].startswith("not testable (n=2 pairs")
    r4 = stats.paired_test({**method, 4: 0.95}, {**ref, 4: 0.8})
    assert r4["status"] == "tested" and r4["n_pairs"] == 3
    mean, sd, t, p = by_hand_paired([0.8, 0.9, 0.95], [0.7, 0.75, 0.8])
    assert r4["p"] == pytest.approx(p, rel=1e-9)


def test_mismatched_seed_sets_raise_naming_missing_seeds():
    with pytest.raises(stats.SeedMismatchError) as e:
        stats.paired_test(
            {0: 1.0, 1: 2.0, 3: 3.0}, {0: 1.0, 1: 2.0, 2: 3.0}, method="topk", reference="dense"
        )
    msg = str(e.value)
    assert isinstance(e.value, BenchError)
    assert "mismatched seed sets" in msg
    assert "topk has seeds [0, 1, 3]" in msg and "dense has [0, 1, 2]" in msg
    assert "missing for topk: [2]" in msg and "missing for dense: [3]" in msg
    assert "run the missing cells or remove them" in msg


def test_zero_variance_of_differences():
    r = stats.paired_test({0: 1.5, 1: 2.5, 2: 3.5}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert r["status"] == "not testable (zero variance of differences)"
    assert math.isnan(r["t"]) and math.isnan(r["p"]) and math.isnan(r["d_z"])
    assert r["mean_diff"] == pytest.approx(0.5)
    ref = {0: 0.71, 1: 0.83, 2: 0.97}
    noisy = stats.paired_test({k: v + 0.1 for k, v in ref.items()}, ref)  # float noise only
    assert noisy["status"] == "not testable (zero variance of differences)"
    same = stats.paired_test({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert same["status"].startswith("not testable (zero variance of differences")
    assert "all differences are exactly zero" in same["status"]
    assert same["mean_diff"] == 0.0 and math.isnan(same["p"])


# ------------------------------------------------------------------------------------- holm


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_holm_keeps_nan_out_of_the_family():
    out = stats.holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)
    assert math.isnan(out[1])
    assert all(math.isnan(x) for x in stats.holm([float("nan")]))


# ----------------------------------------------------------------------------------- claims


def test_decimals():
    assert stats.decimals("0.8300") == 4
    assert stats.decimals(433.49) == 2
    assert stats.decimals(0.0004) == 4
    assert stats.decimals(465) == 0
    assert stats.decimals("1e-5") == 5
    assert stats.half_unit(1.11) == pytest.approx(0.005)


# ------------------------------------------------------------------- the verdict rule's tests


def test_t_interval_by_hand_and_per_column():
    mean, sd, lo, hi = stats.t_interval([1.0, 2.0, 3.0], 0.95)
    assert mean - lo == pytest.approx(hi - mean)
    assert (mean, sd) == (2.0, 1.0)
    assert hi - mean == pytest.approx(T975[2] / math.sqrt(3))
    cols = stats.t_interval([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]], 0.95)
    assert cols[0].tolist() == [2.0, 20.0] and cols[1].tolist() == [1.0, 10.0]


def test_tost_is_the_90_percent_interval_inside_the_band():
    x = [0.8, 1.0, 1.1, 0.9, 1.2]
    _, _, lo90, hi90 = stats.t_interval(x, 0.90)
    assert stats.tost_p(x, lo90 - 1e-9, hi90 + 1e-9) < 0.05  # band just wider: reproduced
    assert stats.tost_p(x, lo90 + 1e-6, hi90 + 1) > 0.05  # lower edge inside the interval
    # paired: the same as one sample of the differences
    versus = [0.1, 0.3, -0.2, 0.0, 0.4]
    diffs = [a - b for a, b in zip(x, versus)]
    assert stats.tost_p(x, -2, 2, versus) == pytest.approx(stats.tost_p(diffs, -2, 2))


def test_greater_p_one_sided():
    x, versus = [2.0, 3.0, 4.0], [1.0, 1.5, 2.5]  # differences 1, 1.5, 1.5
    d = [1.0, 1.5, 1.5]
    m = sum(d) / 3
    sd = math.sqrt(sum((v - m) ** 2 for v in d) / 2)
    t = (m - 0.5) / (sd / math.sqrt(3))
    p_two = p_two_sided(t, 2)
    assert stats.greater_p(x, 0.5, versus) == pytest.approx(p_two / 2, rel=1e-9)
    assert stats.greater_p(d, 0.5) == pytest.approx(p_two / 2, rel=1e-9)


def test_seeds_needed_matches_statsmodels_solve_power():
    from statsmodels.stats.power import TTestPower

    n = stats.seeds_one_sided(0.5, 1.0, 0.05)
    solved = TTestPower().solve_power(effect_size=0.5, power=0.8, alpha=0.05,
                                      alternative="larger")
    assert n == math.ceil(solved)
    assert stats.seeds_one_sided(0.0, 1.0, 0.05) is None  # no distance: never decided
    assert stats.seeds_one_sided(1e-6, 1.0, 0.05) is None  # beyond SEEDS_MAX
    # TOST with the truth in the middle of a band +-1 sd: a handful of seeds
    n_tost = stats.seeds_tost(0.0, 1.0, -1.0, 1.0)
    assert 10 <= n_tost <= 25
    assert stats.seeds_tost(2.0, 1.0, -1.0, 1.0) is None  # outside the band: not TOST's job


def test_welch_and_mean_halfwidths_by_hand():
    from scipy.stats import t as tdist

    assert stats.mean_halfwidth(1.0, 3) == pytest.approx(T975[2] / math.sqrt(3))
    half, df = stats.welch_halfwidth(0.19, 3, 0.15, 3)
    v1, v2 = 0.19**2 / 3, 0.15**2 / 3
    df_hand = (v1 + v2) ** 2 / (v1**2 / 2 + v2**2 / 2)
    assert df == pytest.approx(df_hand)
    assert half == pytest.approx(tdist.ppf(0.975, df_hand) * math.sqrt(v1 + v2))
    with pytest.raises(ValueError):
        stats.mean_halfwidth(1.0, 1)


# ------------------------------------------------------------------------------- paper checks


def _peak_claim(group):
    runs, mean, std = PEAK_MB[group]
    return {"id": f"{group}_peak", "value": mean, "std": std, "runs": runs}


def test_restwake_sgd_std_is_inconsistent():
    rows = stats.paper_checks(_peak_claim("sgd"))
    by = {r["check"].split(" ")[0]: r for r in rows}
    assert by["mean"]["consistent"] is True
    assert by["mean"]["recomputed"] == pytest.approx(433.49)
    std = by["std"]
    assert std["check"] == "std (ddof=1)"
    assert std["consistent"] is False
    assert std["stated"] == 52.34
    # sample std by hand: deviations from 433.49
    devs = [370.66 - 433.49, 464.74 - 433.49, 465.07 - 433.49]
    sample = math.sqrt(sum(d * d for d in devs) / 2)
    population = math.sqrt(sum(d * d for d in devs) / 3)
    assert std["recomputed"] == pytest.approx(sample) and round(sample, 2) == 54.41
    assert round(population, 2) == 44.43  # 52.34 is not the population std either
    assert "neither" in std["note"] and "44.43" in std["note"] and "54.41" in std["note"]


def test_restwake_improved_std_is_inconsistent_original_within_rounding():
    imp = {r["check"]: r for r in stats.paper_checks(_peak_claim("improved"))}
    assert imp["std (ddof=1)"]["consistent"] is False
    assert round(imp["std (ddof=1)"]["recomputed"], 2) == 1.80
    # original: stated 1.11, sample std of the printed runs 1.1163; the runs' own rounding
    # (+-0.005 each) moves the std by up to ~0.0055, so 1.11 is within rounding.
    orig = {r["check"]: r for r in stats.paper_checks(_peak_claim("original"))}
    assert round(orig["std (ddof=1)"]["recomputed"], 2) == 1.12
    assert orig["std (ddof=1)"]["consistent"] is True
    assert orig["mean"]["consistent"] is True


def test_paper_checks_names_population_std():
    runs = [1.0, 2.0, 3.0]  # sample std 1, population std sqrt(2/3) = 0.8165
    rows = stats.paper_checks({"id": "x", "value": 2.0, "std": 0.82, "runs": runs})
    std = [r for r in rows if r["check"].startswith("std")][0]
    assert std["check"] == "std (ddof=0)" and std["consistent"] is True
    assert std["recomputed"] == pytest.approx(math.sqrt(2 / 3))
    assert "ddof=0" in std["note"]


def test_paper_checks_mean_inconsistent():
    rows = stats.paper_checks({"id": "x", "value": 0.8400, "runs": [0.8263, 0.8311, 0.8384]})
    assert rows[0]["check"] == "mean" and rows[0]["consistent"] is False
    assert rows[0]["recomputed"] == pytest.approx((0.8263 + 0.8311 + 0.8384) / 3)


def test_restwake_val_acc_means_consistent():
    stated = {"sgd": 0.8319, "original": 0.8285, "improved": 0.8301}
    for g, runs in VAL_ACC.items():
        rows = stats.paper_checks({"id": g, "value": stated[g], "runs": runs})
        assert rows[0]["consistent"] is True, g


def test_restwake_paired_p_claim_inconsistent():
    claim = {
        "id": "p",
        "kind": "equivalence",
        "stated_p": 0.0919,
        "runs": VAL_ACC["improved"],
        "versus_runs": VAL_ACC["sgd"],
    }
    rows = {r["check"]: r for r in stats.paper_checks(claim)}
    paired, welch = rows["p (paired t-test)"], rows["p (Welch t-test)"]
    assert paired["stated"] == 0.0919
    by_hand = by_hand_paired(VAL_ACC["improved"], VAL_ACC["sgd"])[3]
    assert paired["recomputed"] == pytest.approx(by_hand)
    assert paired["consistent"] is False and welch["consistent"] is False
    # Welch by hand
    a, b = VAL_ACC["improved"], VAL_ACC["sgd"]
    ma, mb = sum(a) / 3, sum(b) / 3
    va = sum((x - ma) ** 2 for x in a) / 2
    vb = sum((x - mb) ** 2 for x in b) / 2
    t = (ma - mb) / math.sqrt(va / 3 + vb / 3)
    df = (va / 3 + vb / 3) ** 2 / ((va / 3) ** 2 / 2 + (vb / 3) ** 2 / 2)
    from scipy.stats import t as tdist

    assert welch["recomputed"] == pytest.approx(2 * tdist.sf(abs(t), df), rel=1e-9)
    assert "no t-test on the stated runs" in paired["note"]


def test_paired_p_claim_consistent_when_it_is():
    method = [5.0, 7.0, 9.0, 6.0]
    ref = [4.0, 5.0, 8.0, 6.0]
    claim = {"id": "p", "kind": "superiority", "stated_p": 0.0917, "runs": method,
             "versus_runs": ref}  # fmt: skip
    rows = {r["check"]: r for r in stats.paper_checks(claim)}
    assert rows["p (paired t-test)"]["consistent"] is True
    assert rows["p (Welch t-test)"]["consistent"] is False


def test_paper_checks_without_runs_is_empty():
    assert stats.paper_checks({"id": "x", "value": 1.0, "std": 0.1}) == []
