"""Reads a container's json-file log straight from disk, following dockerd's rotation.

dockerd writes `<id>-json.log`, one JSON object per line (`log`, `stream`, `time`), and with `max-size`
rotates by renaming: the live file becomes `.1`, `.1` becomes `.2` and so on, the oldest past `max-file` is
deleted, and a new live file is created. The reader therefore tracks files by identity (device and inode),
never by name, and keeps every file it knows about open: an open descriptor keeps a renamed or deleted file
readable, so once a file has been seen its data cannot be lost (the approach of Filebeat's harvesters).
inotify on the folder wakes the reader on every write and rotation (polling is the fallback), and while
busy it stat's the path every few hundred lines, so a new live file is opened almost as soon as it appears;
if dockerd rotates several times between two looks, the files in between are found among `.1 .. .N` by
identity. Only a file created and deleted entirely between two looks is lost: that is a gap, counted and
logged (`shipper_log_gap_total`), as is a truncation or a checkpoint whose file no longer exists. Gap
reasons: `rotated_before_read` (the checkpoint's file is gone), `rotation_overrun` (dockerd rotated
max-file times or more between two looks: the file system cannot tell whether a whole file was lost, so it
is reported as possible), `rotated_before_start` (a container started while shipper ran had all max-file
files at its first read: the oldest may be gone), `compressed_before_read` (with `compress=true`, files
rotated and gzipped before they were seen: compressed files are not read), `truncated` (also max-file=1,
where dockerd truncates the live file in place, noticed by its first line changing).

Modules:
    follow    `JsonFileSource`: lifecycle, the read loop, checkpoints and gap reporting
    parse     chunks of bytes -> entries for the assembler (the hot loop), and classifying bad lines
    rotation  file identity and fingerprints, opening the rotated files in order, finding a resume point
    inotify   the ctypes inotify binding that wakes readers
"""

from shipper.sources.jsonfile.follow import OFFSET_MASK, JsonFileSource

__all__ = ["OFFSET_MASK", "JsonFileSource"]
