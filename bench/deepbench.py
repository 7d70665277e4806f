"""DeepBench's server-inference LSTM problems: fastlstm in float32, bfloat16 and int8 against
PyTorch (float32, bfloat16 autocast) and ONNX Runtime (float32, dynamic int8).

    python bench/deepbench.py [--quick] [--hidden 512,1024] [--threads 2] [--json PATH]

The problems are the LSTM entries of ``inference_server_set`` in baidu-research/DeepBench
``code/kernels/rnn_problems.h`` (hidden units, batch size, timesteps): hidden 512, 1024 and
2048 at batch 1, 2, 4 over 25 steps, 1536 at batch 1, 2, 4 over 50 steps and 256 at batch 1,
2, 4 over 150 steps; the file gives no input size, and DeepBench's RNN benchmarks take it
equal to the hidden size, as here. (Its GRU and vanilla-RNN entries are not run.)

Columns, method and models are those of ``bench/compare_peers.py --lowp`` (alternating
blocks, medians, quiet BLAS; one torch.nn.LSTM per hidden size, its ONNX export and int8
quantization, fastlstm's model of the same weights through fastlstm.convert.from_torch and
fl.quantize, whose columns read "—" in a fastlstm without ``quantize``). The models of one
hidden size serve its three batch sizes (the ONNX file has dynamic batch and time); they are
built, timed and freed one hidden size at a time, their ONNX files in a temporary directory
removed afterwards (hidden 2048: 128 MiB of float32 weights). ``--quick`` runs three small
problems with fewer repetitions; ``--hidden`` keeps the listed hidden sizes only, to split a
run. The full set takes about 6 minutes on two cores.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare_peers import (LowpModels, lowp_header, lowp_row, lowp_tables,  # noqa: E402
                           LOWP_COLUMNS)

# (hidden, batch, timesteps): the "lstm" rows of DeepBench's inference_server_set
DEEPBENCH_LSTM_INFERENCE = [
    (512, 1, 25), (512, 2, 25), (512, 4, 25),
    (1024, 1, 25), (1024, 2, 25), (1024, 4, 25),
    (2048, 1, 25), (2048, 2, 25), (2048, 4, 25),
    (1536, 1, 50), (1536, 2, 50), (1536, 4, 50),
    (256, 1, 150), (256, 2, 150), (256, 4, 150),
]
QUICK = [(512, 1, 25), (512, 4, 25), (256, 1, 150)]


def run(problems, threads, reps, per_block, onnx=True, print_fn=print):
    """[((H, B, T), {column: {"s", "err", "gops"} or None})] in the order of `problems`, and
    {H: op types of the int8 ONNX graph}, notes."""
    by_h = {}
    for H, B, T in problems:
        by_h.setdefault(H, []).append((B, T))
    done, ops, notes = {}, {}, []
    for H, bts in by_h.items():
        models = LowpModels(H, threads, onnx=onnx)
        try:
            notes += [f"H={H}: {n}" for n in models.note]
            if models.int8_ops:
                ops[H] = models.int8_ops
            for B, T in bts:
                done[(H, B, T)] = lowp_row(models, T, B, reps, per_block)
                print_fn(f"  done H={H} B={B} T={T}", file=sys.stderr)
        finally:
            models.close()
            del models
            gc.collect()
    return [(p, done[p]) for p in problems], ops, notes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="three small problems, fewer repetitions")
    p.add_argument("--hidden", help="only these hidden sizes, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    import torch
    import fastlstm as fl
    torch.set_num_threads(args.threads)
    fl.set_num_threads(args.threads)
    problems = QUICK if args.quick else DEEPBENCH_LSTM_INFERENCE
    if args.hidden:
        keep = {int(h) for h in args.hidden.split(",")}
        problems = [q for q in problems if q[0] in keep]
    reps, per_block = (3, 1) if args.quick else (5, 2)
    lines = lowp_header(torch, args.threads)
    for line in lines:
        print(line)
    print(f"\nDeepBench server-inference LSTM problems (I = H), {args.threads} threads, "
          f"medians of {reps} alternating blocks\n")

    def progress(msg, file=None):
        print(msg, file=file or sys.stdout, flush=True)

    rows, ops, notes = run(problems, args.threads, reps, per_block, onnx=not args.no_onnx,
                           print_fn=progress)
    for line in lowp_tables(rows, label="H=I | B | T"):
        print(line)
    for H, o in ops.items():
        print(f"ORT int8 graph (H={H}): "
              f"{'contains' if 'DynamicQuantizeLSTM' in o else 'LACKS'} DynamicQuantizeLSTM")
    for n in dict.fromkeys(notes):
        print(n)
    if args.json:
        import datetime
        import json
        doc = {"environment": lines, "threads": args.threads,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "source": "baidu-research/DeepBench code/kernels/rnn_problems.h, "
                         "inference_server_set, lstm rows",
               "columns": LOWP_COLUMNS, "int8_ops": {str(h): o for h, o in ops.items()},
               "rows": [{"H": s[0], "I": s[0], "B": s[1], "T": s[2], **r} for s, r in rows],
               "notes": notes}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
