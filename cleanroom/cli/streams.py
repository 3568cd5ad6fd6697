"""The CLI's stream flags: a stream upload's declaration (`dataset upload`) and a windowed job's
windows (`job train`, `job evaluate`), parsed by the SDK's helpers (cleanroom/sdk/streams.py)."""

from __future__ import annotations

import argparse

from cleanroom.domain.streams import ThresholdLabel
from cleanroom.sdk.schema import Schema, SchemaError
from cleanroom.sdk.streams import RULE_FORM, parse_channel, parse_label_rule, stream_spec, window_spec
from cleanroom.v1 import datasets_pb2, jobs_pb2


def _channel(text: str) -> datasets_pb2.ChannelSpec:
    try:
        return parse_channel(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _rule(text: str) -> ThresholdLabel:
    try:
        return parse_label_rule(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_upload_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "streams", "Upload the file as a stream of timed readings (one row per patient and time; wellness-IoT, "
                   "monitors). The flags replace a [stream] table in the schema file. The TIME column is declared in "
                   "the schema with type timestamp and role time (ISO 8601 with one offset throughout, or epoch seconds); "
                   "readings of one patient must be strictly increasing in time.")
    group.add_argument("--stream-time", metavar="COLUMN", help="the TIME column: when each reading was taken")
    group.add_argument("--channel", type=_channel, action="append", default=[], metavar="NAME:UNIT[:UNIT_COLUMN]",
                       help="a channel (repeat per channel): a numeric FEATURE column and its unit, public, e.g. hr:bpm or "
                            "spo2:%%. UNIT_COLUMN names a column (role unit) holding each reading's unit: intake refuses "
                            "the upload if it differs from UNIT anywhere, and drops the column")
    group.add_argument("--resolution", type=int, default=None, metavar="SECONDS",
                       help="floor every time to this many seconds (1 to 3600; default 1); readings of one patient in one "
                            "such cell are averaged")
    group.add_argument("--shift-days", type=int, default=None, metavar="N",
                       help="move each patient's times by a secret whole number of days in [-N, N] (default 0: not "
                            "shifted); the time of day survives, the calendar date does not")


def upload_stream(args: argparse.Namespace, schema: Schema) -> datasets_pb2.StreamSpec | None:
    """The stream the flags declare, else the schema file's (None: a table upload)."""
    named = args.channel or args.resolution is not None or args.shift_days is not None
    if not args.stream_time:
        if named:
            raise SchemaError("--channel, --resolution and --shift-days describe a stream: name its time column with --stream-time")
        return schema.stream
    if not args.channel:
        raise SchemaError("a stream names at least one --channel NAME:UNIT")
    return stream_spec(args.stream_time, args.channel,
                       resolution_seconds=args.resolution if args.resolution is not None else 1,
                       max_shift_days=args.shift_days or 0)


def add_window_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "stream datasets", "A job over a stream dataset trains or evaluates on windows of each patient's readings; "
                           "--features names the channels in the model's channel order, and the model's input_shape must "
                           "be [channels, WINDOW / RESAMPLE]. The privacy unit stays the patient: --max-rows-per-patient "
                           "bounds the windows one patient gives to one step (or to an evaluation).")
    group.add_argument("--window", type=int, metavar="SECONDS", help="window length (required for a stream dataset)")
    group.add_argument("--stride", type=int, metavar="SECONDS", help="seconds between window starts (default: the window, no overlap)")
    group.add_argument("--resample", type=int, default=1, metavar="SECONDS",
                       help="each channel is averaged over cells of this many seconds (a multiple of the stream's "
                            "resolution; default 1)")
    group.add_argument("--min-coverage", type=float, default=0.5, metavar="F",
                       help="keep a window only when every channel has readings in at least this fraction of its cells "
                            "(default 0.5); empty cells are filled from the nearest reading")
    group.add_argument("--label-rule", type=_rule, metavar='"CHANNEL below|above THRESHOLD for SECONDS"',
                       help=f"label each window by a rule over a channel instead of --label: {RULE_FORM} (positive when "
                            "spo2 stays below 90 for 60 s in a row anywhere in the window; a binary-classification model)")


def job_windows(args: argparse.Namespace) -> jobs_pb2.WindowSpec | None:
    """The windows the flags name (None: a table job); refuses window flags without --window."""
    if args.window is None:
        if args.stride is not None or args.label_rule is not None:
            raise SchemaError("--stride and --label-rule cut a stream into windows: give --window SECONDS too")
        return None
    return window_spec(args.window, args.stride, args.resample, min_coverage=args.min_coverage, label_rule=args.label_rule)


def window_line(spec: jobs_pb2.TrainingSpec | jobs_pb2.EvaluationSpec) -> list[str]:
    """A job's windows in words, for `job show` (none for a table job)."""
    if not spec.HasField("windows"):
        return []
    w = spec.windows
    label = (f"label: {w.label_rule.channel} {w.label_rule.comparison} {w.label_rule.threshold:g} for {w.label_rule.for_seconds} s"
             if w.HasField("label_rule") else f"label: {spec.label_column} at the window's last reading")
    return [f"  windows           {w.window_seconds} s every {w.stride_seconds} s, resampled to {w.resample_seconds} s cells "
            f"(min coverage {w.min_coverage:g}); {label}"]
