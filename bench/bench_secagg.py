"""Added cost of secure aggregation per client per round: seconds and bytes, cohorts of 10 to 1,000.

Workload: the upload of biased MF on ML-100K, 1,682 items x (64 + 1) = 109,330 floats per client,
through the full protocol (fedrec/privacy/secagg.py: Bonawitz et al. with the SecAgg+ neighbour
graph) simulated in one process, without dropouts and with a share of clients dropping (half
before sending input, half after). Every client uploads the same vector (a broadcast view, so a
1,000-client cohort needs no 1,000 x 109,330 array); cost does not depend on the values.
"Client s" is one client's own compute summed over the four rounds; "server s" is the server's
whole round. Bytes count every message a client sends (up) or receives (down), against 4 bytes
per float for the plain upload. Additive homomorphic encryption (Paillier, 2048-bit key, packed
fixed point; fedrec/privacy/he.py) is timed per parameter on 3 silos (--no-he skips it).

A second table times ``fedrec train`` rounds of configs/ml100k-mf-fedavg.toml (943 clients, MF dim 128)
with and without ``privacy.secure_aggregation=true``: seconds per round, the protocol's share
(``secagg_seconds`` in history.jsonl), measured bytes up per client, and the largest difference
between the two models (fixed-point precision). Needs $FEDREC_DATA (--no-train skips it).

    FEDREC_DATA=../shared/data python bench/bench_secagg.py   # 10, 100, 1,000 clients + training rounds
    python bench/bench_secagg.py --quick --no-write   # smoke run: small cohorts, short vectors, tiny synthetic job
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from fedrec.privacy.secagg import SecAggSettings, secure_sum  # noqa: E402

MF_UPLOAD = 1682 * (64 + 1)


def measure(num_clients: int, length: int, dropout: float, seed: int = 0) -> dict[str, float]:
    settings = SecAggSettings()
    row = np.random.default_rng(seed).uniform(-1.0, 1.0, length)
    vectors = np.broadcast_to(row, (num_clients, length))
    dropped = np.random.default_rng(seed + 1).permutation(num_clients)[: int(round(dropout * num_clients))]
    half = len(dropped) // 2
    result = secure_sum(vectors, settings, seed=seed, drop_before_input=dropped[:half], drop_after_input=dropped[half:])
    expected = row * len(result.survivors)
    error = float(np.abs(result.sum - expected).max())
    if error > settings.codec.sum_error_bound(num_clients):
        raise SystemExit(f"secure sum off by {error} for {num_clients} clients: a bug, not a benchmark")
    return {"clients": num_clients, "dropout": dropout, "degree": result.degree, "threshold": result.threshold,
            "client_s": result.client_seconds, "server_s": result.server_seconds,
            "up": result.bytes_up_per_client, "down": result.bytes_down_per_client,
            "input": result.input_bytes_per_client, "plain": 4 * length, "error": error}


def he_section(length: int, key_bits: int, mf_length: int) -> str:
    from fedrec.privacy.he import measure_paillier

    cost = measure_paillier(num_clients=3, length=length, key_bits=key_bits)
    encrypt = cost["encrypt_s"] / length
    add = cost["add_s"] / (cost["clients"] - 1) / length
    decrypt = cost["decrypt_s"] / length
    return ("| additive HE | silo: encrypt ms / parameter | server: add ms / parameter / silo | "
            "key holder: decrypt ms / parameter | bytes up / parameter | values per ciphertext |\n"
            "|---|---:|---:|---:|---:|---:|\n"
            f"| Paillier {key_bits}-bit, {cost['clients']} silos x {length:,} parameters | {1e3 * encrypt:.3f} | "
            f"{1e3 * add:.4f} | {1e3 * decrypt:.3f} | {cost['ciphertext_bytes'] / length:.1f} | "
            f"{cost['values_per_ciphertext']:.0f} |\n\n"
            f"At these rates one silo encrypts the ML-100K MF upload ({mf_length:,} values) in about "
            f"{encrypt * mf_length:.0f} s and uploads {cost['ciphertext_bytes'] / length * mf_length / 1e6:.1f} MB "
            f"(plain float32: {4 * mf_length / 1e6:.1f} MB).\n")


def train_section(config: Path, overrides: list[str], rounds: int) -> str:
    """Rounds of ``fedrec train`` with and without secure aggregation: time, protocol share, bytes, model difference."""
    import json
    import tempfile

    from safetensors.torch import load_file

    from fedrec.config import load_config
    from fedrec.runtime.trainer import train

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("plain", []), ("secure aggregation", ["privacy.secure_aggregation=true"])):
            out = Path(tmp) / name.replace(" ", "_")
            metrics = train(load_config(config, [*overrides, f"train.rounds={rounds}", f"train.eval_every={rounds}",
                                                 *extra]), out)
            lines = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
            params = {k: v for k, v in load_file(out / "checkpoint.safetensors").items() if k.startswith("param/")}
            runs[name] = (metrics, lines, params)
    plain, secure = runs["plain"], runs["secure aggregation"]
    difference = max(float((plain[2][k] - secure[2][k]).abs().max()) for k in plain[2])
    rows = ["| training round | seconds / round | of which protocol | clients | bytes up / client / round | test RMSE |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, (metrics, lines, _) in runs.items():
        seconds = metrics["seconds"] / rounds
        protocol = np.mean([line.get("secagg_seconds", 0.0) for line in lines])
        clients = np.mean([line["clients"] for line in lines])
        up = np.mean([line["bytes_up"] / line["clients"] for line in lines])
        rows.append(f"| {name} | {seconds:.1f} | {protocol:.1f} | {clients:,.0f} | {up:,.0f} | {metrics['rmse']:.4f} |")
    return (f"`fedrec train {config.name}` for {rounds} rounds, with and without `--set privacy.secure_aggregation=true` "
            f"(all parties simulated in one process):\n\n" + "\n".join(rows) +
            f"\n\nLargest difference between the two models' parameters: {difference:.1e} (fixed point, 24 fraction bits).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--length", type=int, default=MF_UPLOAD, help="floats per client upload")
    parser.add_argument("--dropout", type=float, default=0.1, help="share of clients dropping in the second row")
    parser.add_argument("--he-length", type=int, default=2000, help="parameters for the Paillier timing")
    parser.add_argument("--no-he", action="store_true", help="skip the Paillier timing (fedrec/privacy/he.py)")
    parser.add_argument("--quick", action="store_true", help="smoke run: cohorts 10 and 30, 1,000 floats")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--no-train", action="store_true", help="skip the fedrec train rounds (needs $FEDREC_DATA)")
    parser.add_argument("--train-rounds", type=int, default=2)
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    train_config, train_overrides = root / "configs/ml100k-mf-fedavg.toml", []
    if args.quick:
        args.cohorts, args.length, args.he_length = [10, 30], 1000, 50
        train_config = root / "configs/default.toml"
        train_overrides = ["data.num_users=40", "data.num_items=60", "model.dim=4"]

    rows = []
    for n in args.cohorts:
        for dropout in (0.0, args.dropout):
            r = measure(n, args.length, dropout)
            rows.append(r)
            print(f"n={n} dropout={dropout:.0%} k={r['degree']} t={r['threshold']} client={r['client_s']:.3f}s "
                  f"server={r['server_s']:.3f}s up={r['up']:.0f}B down={r['down']:.0f}B", flush=True)
    table = ["| clients | dropouts | neighbours k | threshold t | client s / round | server s / round | "
             "bytes up / client | of which masked vector | plain float32 upload | added bytes up | bytes down / client |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['clients']:,} | {r['dropout']:.0%} | {r['degree']} | {r['threshold']} | {r['client_s']:.3f} | "
                     f"{r['server_s']:.2f} | {r['up']:,.0f} | {r['input']:,} | {r['plain']:,} | "
                     f"{r['up'] - r['plain']:,.0f} | {r['down']:,.0f} |")
    body = (f"Upload of {args.length:,} values per client (ML-100K MF: 1,682 items x 65), fixed point in Z_2^64 "
            f"(24 fraction bits), SecAgg+ graph with k = 2 ceil(2 log2 n) neighbours (complete graph below), "
            f"t = ceil(k/2). Dropped clients: half before sending input, half after.\n\n" + "\n".join(table) + "\n")
    if not args.no_he:
        body += "\n" + he_section(args.he_length, 2048, MF_UPLOAD)
    if not args.no_train:
        body += "\n" + train_section(train_config, train_overrides, args.train_rounds)
    print(body)
    if not args.no_write:
        write_section("secagg", "Secure aggregation: added cost per client per round", body)


if __name__ == "__main__":
    main()
