//! The CRC-32s of the datastore's own files, one table-driven implementation for both
//! polynomials: IEEE 802.3 (the zlib/PNG one) for the journal's records (`journal.rs`), and
//! Castagnoli (CRC-32C) for the values log's records (`vlog.rs`), which the SSE 4.2 instruction
//! computes where the CPU has it (16 KiB in about a microsecond, against tens with a table).

/// The lookup table of the reflected CRC-32 with polynomial `poly`.
const fn table(poly: u32) -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { poly ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// Feed `data` into a running register (start with `!0`, finish with `^ !0`) with `table`.
fn update_with(table: &[u32; 256], mut c: u32, data: &[u8]) -> u32 {
    for &b in data {
        c = table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    c
}

const IEEE: [u32; 256] = table(0xEDB8_8320);

/// CRC-32 (IEEE 802.3, the zlib/PNG one) of `data`.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    crc32_update(!0, data) ^ !0
}

/// Feed `data` into a running CRC-32 register (start with `!0`, finish with `^ !0`).
pub(crate) fn crc32_update(c: u32, data: &[u8]) -> u32 {
    update_with(&IEEE, c, data)
}

/// CRC-32C (Castagnoli).
pub(crate) mod crc32c {
    const CASTAGNOLI: [u32; 256] = super::table(0x82F6_3B78);

    /// Feed `data` into a running register (start with `!0`, end with [`finish`]).
    pub fn update(crc: u32, data: &[u8]) -> u32 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("sse4.2") {
                // SAFETY: the CPU supports SSE 4.2 (checked just above).
                return unsafe { update_sse42(crc, data) };
            }
        }
        update_table(crc, data)
    }

    pub fn finish(crc: u32) -> u32 {
        crc ^ !0
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse4.2")]
    unsafe fn update_sse42(crc: u32, data: &[u8]) -> u32 {
        use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
        let mut c = crc as u64;
        let mut chunks = data.chunks_exact(8);
        for w in &mut chunks {
            c = _mm_crc32_u64(c, u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let mut c = c as u32;
        for &b in chunks.remainder() {
            c = _mm_crc32_u8(c, b);
        }
        c
    }

    fn update_table(c: u32, data: &[u8]) -> u32 {
        super::update_with(&CASTAGNOLI, c, data)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn known_value_and_both_paths_agree() {
            assert_eq!(super::finish(super::update(!0, b"123456789")), 0xE306_9283);
            let data: Vec<u8> = (0..10_007u32).map(|i| (i * 31 % 251) as u8).collect();
            assert_eq!(super::update(!0, &data), super::update_table(!0, &data));
        }
    }
}
