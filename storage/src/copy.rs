//! Copying a large payload into a log buffer with streaming (non-temporal) stores.
//!
//! A payload framed into a log batch is written out and never read again by the CPU: the log
//! writer hands the buffer to the device (O_DIRECT, see `wal::chunk`). An ordinary copy first
//! reads every destination line into the cache (to merge the stores into it) and then leaves
//! 64 KiB of batch there per message, evicting what the broker reads next: the message's body,
//! which it sends on to the consumer right after. Streaming stores skip both. At 64 KiB
//! persistent messages, interleaved pairs of 8 s runs (medians of six): 37 against 45 µs of
//! broker CPU per message and 26.4k against 23.0k msg/s with a first AVX2 version (every pair
//! lower in CPU); 48 against 54 µs and 20.2k against 18.8k msg/s with this one, in a slower
//! phase of the VM. A copy that is read soon after is slower this way, so only payloads of
//! [`STREAMING_BYTES_MIN`] or more take it.
//!
//! The standard library has no stable non-temporal copy, hence the one `unsafe` block below:
//! SSE2 is part of the x86_64 baseline, so no feature detection is needed; elsewhere the copy
//! is an ordinary `extend_from_slice`.

/// Parts from this size on are copied with streaming stores (see the module docs).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const STREAMING_BYTES_MIN: usize = 16 << 10;

/// Appends `src` to `out`, with streaming stores for the bulk of it when `src` is at least
/// [`STREAMING_BYTES_MIN`] bytes (on x86_64); exactly `out.extend_from_slice(src)` in effect.
pub(crate) fn extend_streaming(out: &mut Vec<u8>, src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if src.len() >= STREAMING_BYTES_MIN {
        out.reserve(src.len());
        let at = out.len();
        copy(&mut out.spare_capacity_mut()[..src.len()], src);
        // SAFETY: `copy` initialised all `src.len()` bytes of the spare capacity at `at` (the
        // range it was given), and `reserve` made room for them.
        #[allow(unsafe_code)]
        unsafe {
            out.set_len(at + src.len());
        }
        return;
    }
    out.extend_from_slice(src);
}

#[cfg(target_arch = "x86_64")]
fn copy(dst: &mut [std::mem::MaybeUninit<u8>], src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    const LINE: usize = 64;
    assert_eq!(dst.len(), src.len());
    let len = src.len();
    // Up to the first 16-byte boundary of `dst` (streaming stores need it) with plain stores.
    let head = (dst.as_ptr() as usize).wrapping_neg() % 16;
    let head = head.min(len);
    let (dst_head, dst_rest) = dst.split_at_mut(head);
    let (src_head, src_rest) = src.split_at(head);
    for (d, s) in dst_head.iter_mut().zip(src_head) {
        d.write(*s);
    }
    let lines = src_rest.len() / LINE;
    let (dst_lines, dst_tail) = dst_rest.split_at_mut(lines * LINE);
    let (src_lines, src_tail) = src_rest.split_at(lines * LINE);
    for (d, s) in dst_lines
        .chunks_exact_mut(LINE)
        .zip(src_lines.chunks_exact(LINE))
    {
        let d = d.as_mut_ptr().cast::<__m128i>();
        let s = s.as_ptr().cast::<__m128i>();
        // SAFETY: `d` and `s` each cover 64 bytes inside `dst_lines` and `src_lines` (exact
        // chunks of 64), so the four 16-byte loads and stores at offsets 0..4 stay in bounds;
        // the loads are unaligned loads; `d` is 16-byte aligned because `dst_lines` starts at
        // `dst`'s first 16-byte boundary and every chunk is a multiple of 16 bytes long. SSE2
        // is in the x86_64 baseline. The stores write initialised bytes into `MaybeUninit`
        // memory, which any bytes may occupy.
        #[allow(unsafe_code)]
        unsafe {
            let a = _mm_loadu_si128(s);
            let b = _mm_loadu_si128(s.add(1));
            let c = _mm_loadu_si128(s.add(2));
            let e = _mm_loadu_si128(s.add(3));
            _mm_stream_si128(d, a);
            _mm_stream_si128(d.add(1), b);
            _mm_stream_si128(d.add(2), c);
            _mm_stream_si128(d.add(3), e);
        }
    }
    for (d, s) in dst_tail.iter_mut().zip(src_tail) {
        d.write(*s);
    }
    // Streaming stores are weakly ordered: fence them before the buffer can reach another
    // thread (the log writer takes it under a lock) or the device.
    // SAFETY: `sfence` has no operands and no memory-safety preconditions.
    #[allow(unsafe_code)]
    unsafe {
        _mm_sfence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the threshold and the line size, every destination alignment within
    /// a line, after existing bytes and into a buffer that must grow: the same bytes as a plain
    /// copy.
    #[test]
    fn appends_exactly_the_source_bytes() {
        let source: Vec<u8> = (0..STREAMING_BYTES_MIN * 4 + 200)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        let lens = [
            0,
            1,
            63,
            STREAMING_BYTES_MIN - 1,
            STREAMING_BYTES_MIN,
            STREAMING_BYTES_MIN + 1,
            STREAMING_BYTES_MIN + 15,
            STREAMING_BYTES_MIN + 64,
            65_536,
            65_559,
        ];
        for len in lens {
            for offset in 0..64 {
                for src_offset in [0, 3] {
                    let src = &source[src_offset..src_offset + len];
                    let mut out: Vec<u8> =
                        Vec::with_capacity(if offset % 2 == 0 { 16 } else { 1 << 20 });
                    out.extend(std::iter::repeat_n(0xAB, offset));
                    let mut expected = out.clone();
                    expected.extend_from_slice(src);
                    extend_streaming(&mut out, src);
                    assert!(
                        out == expected,
                        "len {len}, offset {offset}, src offset {src_offset}"
                    );
                }
            }
        }
    }
}
