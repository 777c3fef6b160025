//! Bytes framed for one segment and not yet written, and how the writer writes them.
//!
//! Where the file allows it, a chunk is written with O_DIRECT, straight from its buffer to the
//! device: no copy into the page cache and no writeback at fdatasync (at 64 KiB messages those
//! were about a sixth of the broker's CPU). O_DIRECT wants the offset, the length and the memory
//! aligned to [`DIRECT_ALIGN`], so a direct chunk's buffer holds, from an aligned address:
//! - its *lead*: the segment's bytes from the block boundary at or before the chunk's first byte
//!   up to it. They were written before and are rewritten unchanged, which is harmless even if
//!   the write tears: each sector then holds the same bytes either way;
//! - its own bytes (the records framed into it);
//! - once taken for writing, zeros up to the next block boundary. They land past the log's end,
//!   where a scan stops anyway, and the next chunk's lead overwrites them with the same bytes it
//!   then holds.
//!
//! A chunk of small records (`WalConfig::direct_record_bytes_min`), one whose lead is not at hand
//! (the first one after an open), or one whose buffer lost its alignment when it grew,
//! is written through the page cache as before. A chunk of tombstones only (settles, which are
//! never read back) goes the way the chunk before it went: a write through the page cache right
//! after a direct one starts in a block the page cache no longer holds, and the kernel reads
//! that block from the device before it can copy into it, one more I/O round trip in the sync.

use std::io;
use std::sync::Arc;

use crate::fs::{LogFile, DIRECT_ALIGN};
use crate::ids::{Location, SegmentId};

/// A fresh buffer's capacity (a chunk with a large record gets a `DIRECT_BUFFER_BYTES` one).
const INITIAL_CAPACITY: usize = 256 << 10;

/// The capacity of a buffer for direct writes: large enough that batches seldom grow it (a
/// 64 KiB message stream with confirm window 100 writes batches of 2-4 MiB; growing may move the
/// buffer off its alignment and off its huge pages, and such a buffer is replaced by a new one
/// the next time it is reused, see `Chunk::new`). A chunk starts at its first 2 MiB boundary
/// (see `lay_out_direct`), which leaves at least 8 MiB.
pub(crate) const DIRECT_BUFFER_BYTES: usize = 10 << 20;

/// The huge page size the direct buffers are advised onto, and where in them a chunk starts.
const HUGE_PAGE: usize = 2 << 20;

#[derive(Debug)]
pub(crate) struct Chunk {
    pub segment: SegmentId,
    pub file: Arc<dyn LogFile>,
    /// Where the chunk's own bytes start in the segment.
    pub offset: u64,
    /// Records framed into it that can be read back: puts, not tombstones (nor seals). Their
    /// average size decides whether the chunk goes direct (see `prepare_write`).
    pub readable: u32,
    buf: Vec<u8>,
    /// Index in `buf` of the aligned block boundary the direct write starts at (the lead
    /// follows), or `None` for a chunk written through the page cache.
    aligned_at: Option<usize>,
    /// Index in `buf` of the chunk's first own byte.
    start: usize,
    /// Index in `buf` after its last own byte, once padded for writing.
    end: Option<usize>,
    /// Whether `write` goes direct (decided by `prepare_write`).
    direct: bool,
}

/// Lays `buf` out for a direct chunk: its length becomes the index where the chunk's aligned
/// start goes, which is returned. In a direct buffer that is its first 2 MiB boundary, so the
/// whole batch lies on huge pages (from the 4 KiB boundary, a batch of 2 MiB lay mostly in the
/// buffer's head, which is on small pages, and pinning them was 15-20 % of the log writer's
/// time at 64 KiB messages). The head before it is never written to disk, and is zeroed only
/// the first time a buffer is used: it is kept as it is when the buffer is reused.
fn lay_out_direct(buf: &mut Vec<u8>) -> usize {
    let align = if buf.capacity() == DIRECT_BUFFER_BYTES {
        HUGE_PAGE
    } else {
        DIRECT_ALIGN
    };
    let pad = buf.as_ptr().align_offset(align);
    if buf.len() >= pad {
        buf.truncate(pad);
    } else {
        buf.resize(pad, 0);
    }
    pad
}

/// Own bytes up to which a chunk still moves into a direct buffer when a large record arrives:
/// the move copies them.
const MOVE_BYTES_MAX: usize = 64 << 10;

/// Spare buffers kept for reuse, of each kind (direct and ordinary), so steady-state appends
/// neither allocate nor grow a buffer (growing copies it: with 64 KiB records that was 3 % of
/// the broker's CPU; a new direct buffer is also a fresh mapping to fault in). Larger ones (left
/// by a burst) are freed rather than kept. A batch is usually one buffer, two at a roll.
const SPARE_BUFFERS_MAX: usize = 2;
const SPARE_BUFFER_BYTES_MAX: usize = 16 << 20;

/// Keeps a written chunk's buffer for reuse (`Chunk::new` empties it) if fewer than
/// `SPARE_BUFFERS_MAX` of its kind are kept and it is not oversized; frees it otherwise. Counting by kind matters: a chunk that moves
/// into a direct buffer leaves an ordinary one behind, and ordinary spares must not crowd out
/// the direct ones (each replaced direct buffer was a new mapping to fault in and pin).
pub(crate) fn keep_spare(spares: &mut Vec<Vec<u8>>, buf: Vec<u8>) {
    let direct = buf.capacity() == DIRECT_BUFFER_BYTES;
    let kept = spares
        .iter()
        .filter(|b| (b.capacity() == DIRECT_BUFFER_BYTES) == direct)
        .count();
    if kept < SPARE_BUFFERS_MAX && buf.capacity() <= SPARE_BUFFER_BYTES_MAX {
        spares.push(buf);
    }
}

/// A spare buffer of the kind a chunk wants (a direct one for `large`), taken from `spares`;
/// else a new one of that kind.
pub(crate) fn buffer_for(spares: &mut Vec<Vec<u8>>, large: bool) -> Vec<u8> {
    match spares
        .iter()
        .position(|b| (b.capacity() == DIRECT_BUFFER_BYTES) == large)
    {
        Some(at) => spares.swap_remove(at),
        None if large => direct_buffer(),
        None => Vec::new(),
    }
}

/// A new, empty buffer of `DIRECT_BUFFER_BYTES` for direct writes, backed by transparent huge
/// pages where the kernel has them to give.
///
/// The kernel pins every page of a direct write's buffer for the I/O and maps each into the
/// request; with 4 KiB pages, a 4 MiB batch is a thousand pins and at least four requests (the
/// virtio disk here takes 254 segments per request). With 2 MiB pages it is a few of each. At
/// 64 KiB messages the pinning alone (`gup_fast_fallback`) was 5 % of the broker's CPU; with huge
/// pages, 1.4 %, and throughput rose about a tenth.
fn direct_buffer() -> Vec<u8> {
    let mut buf = Vec::with_capacity(DIRECT_BUFFER_BYTES);
    advise_huge_pages(&mut buf);
    buf
}

/// Asks for transparent huge pages over the 2 MiB-aligned part of `buf`'s allocation. It must
/// be called before the memory is first touched: pages already faulted in stay small.
#[cfg(target_os = "linux")]
fn advise_huge_pages(buf: &mut Vec<u8>) {
    let base = buf.as_mut_ptr();
    let skip = base.align_offset(HUGE_PAGE);
    let len = buf.capacity().saturating_sub(skip) / HUGE_PAGE * HUGE_PAGE;
    if len == 0 {
        return;
    }
    // SAFETY: the range lies inside `buf`'s allocation (`skip + len <= capacity`), which this
    // process owns. MADV_HUGEPAGE changes only which page size the kernel uses to back the range
    // when it is touched; it never changes, drops or unmaps memory, so no Rust reference or value
    // can observe it (unlike MADV_DONTNEED, which is why `madvise` is unsafe in general).
    #[allow(unsafe_code)]
    let advised = unsafe {
        rustix::mm::madvise(
            base.add(skip).cast(),
            len,
            rustix::mm::Advice::LinuxHugepage,
        )
    };
    if let Err(error) = advised {
        // Only speed depends on it (EINVAL where THP is compiled out).
        tracing::debug!(%error, "madvise(MADV_HUGEPAGE) on a log buffer failed");
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_buf: &mut Vec<u8>) {}

/// The last bytes written to a segment, from the block boundary at or before its end: the lead
/// of the next chunk.
#[derive(Debug)]
pub(crate) struct Tail {
    pub segment: SegmentId,
    pub start: u64,
    pub bytes: Vec<u8>,
}

fn block_floor(offset: u64) -> u64 {
    offset - offset % DIRECT_ALIGN as u64
}

impl Chunk {
    /// A chunk starting at `offset`, in `buf` (a spare buffer or a new one). `lead` gives the
    /// segment's bytes from the block boundary before `offset`, when known. `large` says the
    /// chunk starts with a record large enough to go direct: only then is it worth a buffer on
    /// huge pages (a log of small records then never holds one; they are resident in 2 MiB
    /// steps: the 5M-message memory test read 169 MB of RSS when every chunk got one, 148 MB
    /// without).
    pub fn new(
        segment: SegmentId,
        file: Arc<dyn LogFile>,
        offset: u64,
        mut buf: Vec<u8>,
        lead: Option<&[u8]>,
        large: bool,
    ) -> Chunk {
        let mut aligned_at = None;
        if let Some(lead) = lead.filter(|_| file.direct()) {
            debug_assert_eq!(lead.len() as u64, offset - block_floor(offset));
            if large && buf.capacity() != DIRECT_BUFFER_BYTES {
                buf = direct_buffer();
            } else if buf.capacity() != DIRECT_BUFFER_BYTES {
                buf.clear();
                buf.reserve(INITIAL_CAPACITY.max(2 * DIRECT_ALIGN));
            }
            let pad = lay_out_direct(&mut buf);
            buf.extend_from_slice(lead);
            aligned_at = Some(pad);
        } else {
            buf.clear();
            if buf.capacity() == 0 {
                buf.reserve(INITIAL_CAPACITY);
            }
        }
        let start = buf.len();
        Chunk {
            segment,
            file,
            offset,
            readable: 0,
            buf,
            aligned_at,
            start,
            end: None,
            direct: false,
        }
    }

    /// Whether a large record arriving now should move the chunk into a direct buffer (see
    /// [`Chunk::move_to`]): it is laid out for a direct write, in an ordinary buffer, and holds
    /// little yet.
    pub fn wants_direct_buffer(&self) -> bool {
        self.aligned_at.is_some()
            && self.end.is_none()
            && self.buf.capacity() != DIRECT_BUFFER_BYTES
            && self.own().len() <= MOVE_BYTES_MAX
    }

    /// Moves the chunk's lead and bytes into `buf` (a direct buffer), returning the buffer it
    /// was in. A chunk that began with small records (settles, mostly) got an ordinary buffer;
    /// when large records follow, the batch goes direct from it and its 4 KiB pages cost the
    /// pinning that huge pages save (at 64 KiB messages, `gup_fast_fallback` was back at 15 % of
    /// the log writer's time with about half the chunks starting with a settle).
    pub fn move_to(&mut self, mut buf: Vec<u8>) -> Vec<u8> {
        let at = self
            .aligned_at
            .expect("only a chunk laid out for direct writes moves");
        let pad = lay_out_direct(&mut buf);
        buf.extend_from_slice(&self.buf[at..]);
        self.start = pad + (self.start - at);
        self.aligned_at = Some(pad);
        std::mem::replace(&mut self.buf, buf)
    }

    /// The buffer records are framed into (at its end).
    pub fn buf(&mut self) -> &mut Vec<u8> {
        debug_assert!(
            self.end.is_none(),
            "a chunk taken for writing is not appended to"
        );
        &mut self.buf
    }

    /// The chunk's own bytes.
    pub fn own(&self) -> &[u8] {
        &self.buf[self.start..self.end.unwrap_or(self.buf.len())]
    }

    /// Where the chunk's own bytes end in the segment.
    pub fn end_offset(&self) -> u64 {
        self.offset + self.own().len() as u64
    }

    /// The bytes of `location` if this chunk holds them.
    pub fn slice(&self, location: &Location) -> Option<&[u8]> {
        if location.segment != self.segment || location.offset < self.offset {
            return None;
        }
        let start = (location.offset - self.offset) as usize;
        let end = start + location.frame_bytes as usize;
        self.own().get(start..end)
    }

    /// The segment's bytes from `from` to `to` if this chunk holds them (its lead included).
    pub fn covering(&self, segment: SegmentId, from: u64, to: u64) -> Option<&[u8]> {
        let first = self.start - self.aligned_at.unwrap_or(self.start);
        let held_from = self.offset - first as u64;
        if segment != self.segment || from < held_from || to > self.end_offset() {
            return None;
        }
        let at = self.start - first + (from - held_from) as usize;
        Some(&self.buf[at..at + (to - from) as usize])
    }

    /// Readies the chunk for writing: nothing is appended afterwards. A direct chunk is padded
    /// with zeros to a block boundary. It is written through the page cache instead if its
    /// readable records average fewer than `direct_record_bytes_min` bytes (the page cache then
    /// keeps them for reading back: a backlog of small messages drained 25 % slower read from
    /// the device), if it holds none and the chunk before it (`follows_direct`) went through the
    /// page cache too, or if its buffer moved off its alignment as it grew.
    ///
    /// Tombstones do not count towards the average: with 64 KiB messages, a batch of a few
    /// settles and one message averaged under the threshold, and a batch of settles alone went
    /// through the page cache after a direct one; either way the kernel first read the block it
    /// started in back from the device (a third of the batches did).
    pub fn prepare_write(&mut self, direct_record_bytes_min: usize, follows_direct: bool) {
        let end = self.buf.len();
        self.end = Some(end);
        let small = direct_record_bytes_min > 0
            && match self.readable {
                0 => !follows_direct,
                n => self.own().len() < direct_record_bytes_min * n as usize,
            };
        if let Some(at) = self.aligned_at {
            // The lead stays in the buffer either way, so `tail` finds it without a read.
            if small || self.buf[at..].as_ptr().align_offset(DIRECT_ALIGN) != 0 {
                return;
            }
            let padded = at + (end - at).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
            self.buf.resize(padded, 0);
            self.direct = true;
        }
    }

    /// Whether `write` goes direct (decided by `prepare_write`).
    pub fn goes_direct(&self) -> bool {
        self.direct
    }

    /// Writes the chunk to its file; true if it went direct.
    pub fn write(&self) -> io::Result<bool> {
        match self.aligned_at {
            Some(at) if self.direct => {
                let from = block_floor(self.offset);
                self.file.write_direct_at(&self.buf[at..], from)?;
                Ok(true)
            }
            _ => {
                self.file.write_all_at(self.own(), self.offset)?;
                Ok(false)
            }
        }
    }

    /// The segment's bytes from the block boundary before this chunk's end to its end: from the
    /// chunk if it holds them, else read back from the file (just written, so from the page
    /// cache).
    pub fn tail(&self) -> io::Result<Tail> {
        let end = self.end_offset();
        let start = block_floor(end);
        let bytes = match self.covering(self.segment, start, end) {
            Some(bytes) => bytes.to_vec(),
            None => {
                let mut bytes = vec![0; (end - start) as usize];
                self.file.read_exact_at(&mut bytes, start)?;
                bytes
            }
        };
        Ok(Tail {
            segment: self.segment,
            start,
            bytes,
        })
    }

    /// The buffer, for reuse (`Chunk::new` empties it, or keeps a direct buffer's head).
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

impl Tail {
    /// The segment's bytes from `from` to `to` if this tail holds them.
    pub fn covering(&self, segment: SegmentId, from: u64, to: u64) -> Option<&[u8]> {
        if segment != self.segment || from < self.start {
            return None;
        }
        let at = (from - self.start) as usize;
        self.bytes.get(at..at + (to - from) as usize)
    }
}

/// The lead of a chunk starting at `offset` in `segment`: empty at a block boundary (the start
/// of a segment's file, where a roll queues its header), else found in the chunks pending or
/// being written, or in the last tail written; `None` if none holds it.
pub(crate) fn find_lead<'a>(
    pending: &'a [Chunk],
    inflight: &'a [Chunk],
    tail: Option<&'a Tail>,
    segment: SegmentId,
    offset: u64,
) -> Option<&'a [u8]> {
    let from = block_floor(offset);
    if from == offset {
        return Some(&[]);
    }
    pending
        .iter()
        .rev()
        .chain(inflight.iter().rev())
        .find_map(|c| c.covering(segment, from, offset))
        .or_else(|| tail.and_then(|t| t.covering(segment, from, offset)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FileSystem, SimFs};
    use std::path::Path;

    fn file() -> (SimFs, Arc<dyn LogFile>) {
        let fs = SimFs::new(crate::fs::SimFsOptions::seeded(1));
        fs.create_dir_all(Path::new("/d")).unwrap();
        let file = fs.create(Path::new("/d/f")).unwrap();
        (fs, file)
    }

    #[test]
    fn a_direct_chunk_rewrites_its_lead_and_pads_to_a_block_and_the_next_continues_from_its_tail() {
        let (fs, file) = file();
        let first: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut a = Chunk::new(SegmentId(1), file.clone(), 0, Vec::new(), Some(&[]), true);
        a.buf().extend_from_slice(&first);
        a.prepare_write(0, false);
        assert!(a.write().unwrap(), "written direct");
        let tail = a.tail().unwrap();
        assert_eq!((tail.start, tail.bytes.len()), (4096, 5000 - 4096));

        let lead = find_lead(&[], &[], Some(&tail), SegmentId(1), 5000).unwrap();
        let mut b = Chunk::new(
            SegmentId(1),
            file.clone(),
            5000,
            Vec::new(),
            Some(lead),
            true,
        );
        b.buf().extend_from_slice(&[7u8; 300]);
        assert_eq!(b.covering(SegmentId(1), 4096, 5300).unwrap().len(), 1204);
        b.prepare_write(0, false);
        assert!(b.write().unwrap());
        assert_eq!(fs.counters().direct_writes, 2);

        let mut back = vec![0u8; 5300 + 100];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back[..5000], &first[..]);
        assert_eq!(&back[5000..5300], &[7u8; 300][..]);
        assert!(back[5300..].iter().all(|&b| b == 0), "padding is zeros");
        assert_eq!(file.len().unwrap(), 8192, "padded to a block boundary");
    }

    #[test]
    fn only_chunks_of_large_records_go_direct_by_default() {
        let (fs, file) = file();
        let seg = SegmentId(1);
        let mut small = Chunk::new(seg, file.clone(), 0, Vec::new(), Some(&[]), false);
        for _ in 0..40 {
            small.buf().extend_from_slice(&[1u8; 1000]);
            small.readable += 1;
        }
        small.prepare_write(16 << 10, false);
        assert!(
            !small.write().unwrap(),
            "40 records of 1000 bytes: page cache"
        );
        let tail = small.tail().unwrap();
        let lead = find_lead(&[], &[], Some(&tail), seg, 40_000).unwrap();
        let mut large = Chunk::new(seg, file.clone(), 40_000, Vec::new(), Some(lead), true);
        for _ in 0..3 {
            large.buf().extend_from_slice(&[2u8; 20 << 10]);
            large.readable += 1;
        }
        large.prepare_write(16 << 10, false);
        assert!(large.write().unwrap(), "records of 20 KiB: direct");
        assert_eq!(fs.counters().direct_writes, 1);

        // A chunk of small records keeps its lead: its tail needs no read from the file.
        let end = large.end_offset();
        let tail = large.tail().unwrap();
        let lead = find_lead(&[], &[], Some(&tail), seg, end).unwrap();
        let mut next = Chunk::new(seg, file.clone(), end, Vec::new(), Some(lead), false);
        next.buf().extend_from_slice(&[3u8; 100]);
        next.readable += 1;
        next.prepare_write(16 << 10, false);
        assert!(!next.write().unwrap());
        let read_before = fs.counters().read_bytes;
        let tail = next.tail().unwrap();
        assert_eq!(fs.counters().read_bytes, read_before);
        assert_eq!(tail.start + tail.bytes.len() as u64, end + 100);
        let mut back = vec![0u8; end as usize + 100];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back[40_000..end as usize], &[2u8; 3 * (20 << 10)][..]);
        assert_eq!(&back[end as usize..], &[3u8; 100][..]);
    }

    #[test]
    fn tombstones_do_not_count_towards_the_average_that_decides_direct() {
        let (fs, file) = file();
        let seg = SegmentId(1);
        // Five settles and one 70 KB message: 11.7 KB a record, 70.2 KB a readable one.
        let mut mixed = Chunk::new(seg, file.clone(), 0, Vec::new(), Some(&[]), true);
        for _ in 0..5 {
            mixed.buf().extend_from_slice(&[1u8; 40]);
        }
        mixed.buf().extend_from_slice(&[2u8; 70_000]);
        mixed.readable += 1;
        mixed.prepare_write(16 << 10, false);
        assert!(mixed.write().unwrap(), "direct");

        assert_eq!(fs.counters().direct_writes, 1);

        // Settles alone follow the chunk before them, either way; with no threshold, every
        // chunk that can goes direct.
        for (threshold, follows_direct, direct) in [
            (16 << 10, true, true),
            (16 << 10, false, false),
            (0, false, true),
        ] {
            let (fs, file) = self::file();
            let mut settles = Chunk::new(seg, file, 0, Vec::new(), Some(&[]), false);
            settles.buf().extend_from_slice(&[3u8; 120]);
            settles.prepare_write(threshold, follows_direct);
            assert_eq!(settles.goes_direct(), direct);
            assert_eq!(settles.write().unwrap(), direct);
            assert_eq!(fs.counters().direct_writes, direct as u64);
        }
    }

    /// The `AnonHugePages` of the mapping holding `addr`, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn anon_huge_kib(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((from, to)) = range {
                if let (Ok(from), Ok(to)) = (
                    usize::from_str_radix(from, 16),
                    usize::from_str_radix(to, 16),
                ) {
                    inside = (from..to).contains(&addr);
                    continue;
                }
            }
            if let Some(kib) = line.strip_prefix("AnonHugePages:").filter(|_| inside) {
                return kib.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
        None
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_direct_chunk_buffer_is_backed_by_huge_pages_where_the_kernel_offers_them() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        if thp.map_or(true, |t| t.contains("[never]")) {
            eprintln!("transparent huge pages are off here; nothing to check");
            return;
        }
        let (_fs, file) = file();
        let mut c = Chunk::new(SegmentId(1), file, 0, Vec::new(), Some(&[]), true);
        assert_eq!(c.buf().capacity(), DIRECT_BUFFER_BYTES);
        c.buf().extend_from_slice(&vec![5u8; 6 << 20]);
        let huge_at = c.buf().as_ptr() as usize + c.buf().as_ptr().align_offset(2 << 20);
        let kib = anon_huge_kib(huge_at).expect("the buffer's mapping is in /proc/self/smaps");
        assert!(kib >= 2048, "{kib} KiB of huge pages under the buffer");

        let (_fs, file) = self::file();
        let mut small = Chunk::new(SegmentId(1), file, 0, Vec::new(), Some(&[]), false);
        assert!(
            small.buf().capacity() < DIRECT_BUFFER_BYTES,
            "a chunk of small records gets an ordinary buffer"
        );
    }

    #[test]
    fn a_chunk_of_small_records_moves_into_a_direct_buffer_when_a_large_one_arrives() {
        let (fs, file) = file();
        file.write_all_at(&[9u8; 5000], 0).unwrap();
        let lead = [9u8; 5000 - DIRECT_ALIGN];
        let mut spares = vec![Vec::with_capacity(1 << 10)];
        let buf = buffer_for(&mut spares, false);
        let mut c = Chunk::new(SegmentId(1), file.clone(), 5000, buf, Some(&lead), false);
        c.buf().extend_from_slice(&[1u8; 40]); // a settle
        assert!(c.wants_direct_buffer());
        let old = c.move_to(buffer_for(&mut spares, true));
        assert!(old.capacity() < DIRECT_BUFFER_BYTES);
        assert_eq!(c.buf().capacity(), DIRECT_BUFFER_BYTES);
        assert!(!c.wants_direct_buffer(), "moves once");
        c.buf().extend_from_slice(&[2u8; 70_000]); // a large record
        c.readable += 1;
        assert_eq!(c.own().len(), 70_040);
        assert_eq!(
            c.covering(SegmentId(1), 4096, 5000).unwrap(),
            &lead[..],
            "the lead moved with the bytes"
        );
        c.prepare_write(16 << 10, false);
        assert!(c.write().unwrap(), "written direct");
        assert_eq!(fs.counters().direct_writes, 1);
        let mut back = vec![0u8; 75_040];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back[..5000], &[9u8; 5000][..]);
        assert_eq!(&back[5000..5040], &[1u8; 40][..]);
        assert_eq!(&back[5040..], &[2u8; 70_000][..]);
        // The ordinary spare went to the chunk of small records; no direct one was spare, so
        // the move got a new one.
        assert!(spares.is_empty());
    }

    #[test]
    fn a_chunk_without_its_lead_is_written_through_the_page_cache_and_reads_back_its_tail() {
        let (fs, file) = file();
        file.write_all_at(&[9u8; 100], 0).unwrap();
        let mut c = Chunk::new(SegmentId(1), file.clone(), 100, Vec::new(), None, true);
        c.buf().extend_from_slice(&[3u8; 50]);
        c.prepare_write(0, false);
        assert!(!c.write().unwrap());
        assert_eq!(fs.counters().direct_writes, 0);
        let tail = c.tail().unwrap();
        assert_eq!(tail.start, 0);
        assert_eq!(&tail.bytes[..100], &[9u8; 100][..]);
        assert_eq!(&tail.bytes[100..], &[3u8; 50][..]);
        assert_eq!(
            c.slice(&Location {
                segment: SegmentId(1),
                offset: 120,
                frame_bytes: 30
            })
            .unwrap(),
            &[3u8; 30][..]
        );
    }
}
