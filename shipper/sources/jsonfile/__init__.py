"""Reads a container's json-file log straight from disk, following dockerd's rotation.

dockerd writes `<id>-json.log`, one JSON object per line (`log`, `stream`, `time`), and with `max-size`
rotates by renaming: the live file becomes `.1`, `.1` becomes `.2` and so on, the oldest past `max-file` is
deleted, and a new live file is created. The reader therefore tracks files by identity (device and inode),
never by name, and keeps every file it knows about open: an open descriptor keeps a renamed or deleted file
readable, so once a file has been seen its data cannot be lost (the approach of Filebeat's harvesters).
inotify on the folder wakes the reader at once on a rotation and on a write to a quiet log, on further
writes at most every `read_coalesce_secs` (polling is the fallback), and while
busy it stat's the path every few hundred lines, so a new live file is opened almost as soon as it appears;
if dockerd rotates several times between two looks, the files in between are found among `.1 .. .N` by
identity (one missing name is a rotation under way: the listing goes on past it). Only a file created and
deleted entirely between two looks is lost.

A gap is reported only when data was lost, with its size: `shipper_log_gap_total`, `_bytes_total` and
`_lines_total`, and an error line saying `lost_bytes=N lost_lines=M` when exact, `lost_bytes>=N` for the
least the files prove, which is what the counters then count. Where the reader cannot tell whether anything
was lost it says so, as a possible gap (a warning, `shipper_log_gap_possible_total`), never counted as lost.
dockerd rotates (or with max-file=1 truncates) a file only once it holds max-size bytes or more (less than
one entry more), which is what bounds a loss; max-size and max-file come from hostconfig.json. Reasons:
    rotation_overrun        dockerd rotated max-file times or more between two looks. max-file times lose
                            nothing but look the same on disk as more: inotify's count of the live files
                            dockerd created tells them apart. Files deleted unread: their exact number
                            (lost_lines>=, one entry each at least), lost_bytes>= that many times max-size.
                            Without inotify, or after its queue overflowed: a possible gap.
    rotated_before_read     a checkpoint's file is gone: lost_bytes>= max-size minus the position (files
                            deleted whole after it cannot be seen); a possible gap if it was read to max-size
    compressed_before_read  with `compress=true`, files gzipped before they were read (compressed files are
                            not read): measured, exact bytes and lines
    rotated_before_start    a new container (started while shipper ran) found with max-file files at its
                            first read: whether the oldest is its first cannot be told (dockerd writes whole
                            files before it sets StartedAt, so the first entry's time does not tell): possible
    truncated               max-file=1 (dockerd 20.10 truncates the live file in place, noticed by its first
                            line changing): lost_bytes>= max-size minus what was read, no gap if read that
                            far; anyone else's truncation, or a checkpoint past its file's end: possible

Modules:
    follow    `JsonFileSource`: lifecycle, the read loop, checkpoints and gap reporting
    parse     chunks of bytes -> entries for the assembler (the hot loop), and classifying bad lines
    rotation  file identity and fingerprints, opening the rotated files in order, finding a resume point
    inotify   the ctypes inotify binding that wakes readers
"""

from shipper.sources.jsonfile.follow import OFFSET_MASK, JsonFileSource

__all__ = ["OFFSET_MASK", "JsonFileSource"]
