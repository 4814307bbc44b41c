//! The quantisation tables outputs are made with: which base table, scaled how far for a
//! quality setting. Every path that quantises (requantisation, chroma halving, the pixel
//! path's forward DCT) takes its steps from a [`Target`], so they cannot disagree.

use super::{scaled_table, STD_CHROMA_QT, STD_LUMA_QT};

/// How hard the encoder works for smaller files at the same perceived quality
/// (`IMGBATCH_EFFORT`). 0 is the fastest end: libjpeg's Annex K tables, as libjpeg-turbo makes
/// them. 1 takes a table tuned for perceived quality ([`KLEIN`]) at quality settings 20-80,
/// scaled at a setting calibrated so outputs still look at least as good as libjpeg-turbo's at
/// the same number ([`PERCEPTUAL`]); it costs no time. 2 adds rate-distortion quantisation
/// (`trellis`), with its own calibration; 3 lets the writer code a file progressively when
/// that is smaller (`progressive`), which changes no pixel. Each level keeps the ones below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Effort(u8);

impl Default for Effort {
    fn default() -> Effort {
        Effort::DEFAULT
    }
}

impl Effort {
    /// The encoder as it was before efforts: libjpeg's tables, rounding, baseline.
    pub const FASTEST: Effort = Effort(0);
    /// The service's default: the smallest files at the same perceived quality.
    pub const DEFAULT: Effort = Effort(3);
    /// The highest level there is.
    pub const MAX: u8 = 3;

    /// `level` (0 to [`Effort::MAX`]), or None.
    pub fn new(level: u8) -> Option<Effort> {
        (level <= Self::MAX).then_some(Effort(level))
    }

    pub fn level(self) -> u8 {
        self.0
    }
}

impl std::str::FromStr for Effort {
    type Err = String;

    fn from_str(s: &str) -> Result<Effort, String> {
        s.trim()
            .parse::<u8>()
            .ok()
            .and_then(Effort::new)
            .ok_or_else(|| format!("effort must be a whole number from 0 to {}", Effort::MAX))
    }
}

/// What an output is quantised to: the user's quality setting (1-100, libjpeg's scale) and the
/// effort, which together choose the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    quality: u8,
    effort: Effort,
}

impl Target {
    /// `quality` is clamped to 1-100.
    pub fn new(quality: u8, effort: Effort) -> Target {
        Target {
            quality: quality.clamp(1, 100),
            effort,
        }
    }

    /// The quality setting as the user gave it.
    pub fn quality(self) -> u8 {
        self.quality
    }

    /// The setting [`KLEIN`] is scaled at, when this target uses it (effort 1 and up,
    /// settings 20-80); None: libjpeg's tables at the quality setting.
    pub fn perceptual(self) -> Option<u8> {
        match self.effort.0 {
            0 => None,
            1 => perceptual_quality(&PERCEPTUAL, self.quality),
            _ => perceptual_quality(&PERCEPTUAL_TRELLIS, self.quality),
        }
    }

    /// Whether AC coefficients are chosen by rate and distortion (`trellis`) rather than
    /// rounded: effort 2 and up, at the settings it was calibrated for (outside them the
    /// fastest effort's rounding keeps the quality scale honest).
    pub(crate) fn trellis(self) -> bool {
        self.effort.0 >= 2 && self.perceptual().is_some()
    }

    /// Whether the writer may code the output progressively, when that is smaller: effort 3.
    pub(crate) fn progressive(self) -> bool {
        self.effort.0 >= 3
    }

    /// The luma steps, zigzag order.
    pub(crate) fn luma(self) -> [u16; 64] {
        match self.perceptual() {
            None => scaled_table(&STD_LUMA_QT, self.quality),
            Some(setting) => scaled_table(&KLEIN, setting),
        }
    }

    /// The chroma steps, zigzag order.
    pub(crate) fn chroma(self) -> [u16; 64] {
        match self.perceptual() {
            None => scaled_table(&STD_CHROMA_QT, self.quality),
            Some(setting) => scaled_table(&KLEIN, setting),
        }
    }
}

/// Effort 1's calibration: (quality setting, the setting [`KLEIN`] is scaled at), measured with
/// `bench/jpeg_size.py --effort 1 --raw` at settings 20-95 on the twelve S and M bench photos
/// and `bench/calibrate_effort.py`: the coarsest setting at which imgbatch's outputs score in
/// SSIMULACRA2 at least libjpeg-turbo's at the quality setting plus 0.25 on average, and no
/// image more than 0.5 below (docs/performance.md has the table). Above 80 the table needs a
/// finer setting than Annex K does on some photos (85 needed 92: 1.2x the bytes), and below 20
/// it was not measured, so there the fastest effort's tables are kept.
const PERCEPTUAL: [(u8, u8); 13] = [
    (20, 20),
    (25, 25),
    (30, 29),
    (35, 32),
    (40, 36),
    (45, 42),
    (50, 47),
    (55, 52),
    (60, 57),
    (65, 60),
    (70, 67),
    (75, 75),
    (80, 82),
];

/// Efforts 2 and 3's calibration (the table with trellis quantisation; progressive coding
/// changes no pixel), made the same way with `--effort 3` at settings 20-95: trellis drops
/// coefficients that rounding keeps, so each setting takes a finer scale than effort 1's.
const PERCEPTUAL_TRELLIS: [(u8, u8); 13] = [
    (20, 25),
    (25, 30),
    (30, 35),
    (35, 40),
    (40, 45),
    (45, 52),
    (50, 57),
    (55, 60),
    (60, 64),
    (65, 69),
    (70, 75),
    (75, 79),
    (80, 84),
];

/// The setting [`KLEIN`] is scaled at for `quality`, linear between the calibrated anchors;
/// None outside them.
fn perceptual_quality(anchors: &[(u8, u8)], quality: u8) -> Option<u8> {
    anchors.windows(2).find_map(|pair| {
        let ((q0, s0), (q1, s1)) = (pair[0], pair[1]);
        (q0..=q1).contains(&quality).then(|| {
            let (span, step) = (u32::from(q1 - q0), u32::from(quality - q0));
            let sum = u32::from(s1) * step + u32::from(s0) * (span - step);
            ((sum + span / 2) / span) as u8
        })
    })
}

/// Klein, Silverstein and Carney's quantisation table (1992), natural order, for luma and
/// chroma alike: of the nine tables libvips' mozjpeg offers, the one that reached libjpeg-turbo
/// q50's SSIMULACRA2 with the fewest bytes on the bench photos (0.889 of them; mozjpeg's
/// default, Robidoux's, 0.948; bench/results/jpeg_size_tables.md).
pub const KLEIN: [u16; 64] = [
    10, 12, 14, 19, 26, 38, 57, 86, 12, 18, 21, 28, 35, 41, 54, 76, 14, 21, 25, 32, 44, 63, 92,
    136, 19, 28, 32, 41, 54, 75, 107, 157, 26, 35, 44, 54, 70, 95, 132, 190, 38, 41, 63, 75, 95,
    125, 170, 239, 57, 54, 92, 107, 132, 170, 227, 312, 86, 76, 136, 157, 190, 239, 312, 419,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effort_reads_its_levels_and_nothing_else() {
        assert_eq!("0".parse::<Effort>(), Ok(Effort::FASTEST));
        assert_eq!(" 1 ".parse::<Effort>().map(Effort::level), Ok(1));
        for bad in ["4", "-1", "", "fast", "1.5", "256"] {
            assert!(bad.parse::<Effort>().is_err(), "{bad:?}");
        }
        assert_eq!(Effort::default(), Effort::DEFAULT);
        assert_eq!(Effort::DEFAULT.level(), Effort::MAX);
    }

    #[test]
    fn the_fastest_effort_is_libjpegs_tables() {
        for q in 0..=255u8 {
            let t = Target::new(q, Effort::FASTEST);
            assert_eq!(t.luma(), scaled_table(&STD_LUMA_QT, q.clamp(1, 100)));
            assert_eq!(t.chroma(), scaled_table(&STD_CHROMA_QT, q.clamp(1, 100)));
            assert_eq!(t.perceptual(), None);
        }
    }

    #[test]
    fn effort_1_scales_the_perceptual_table_at_the_calibrated_setting() {
        let effort = Effort::new(1).unwrap();
        let mut last = 0;
        for q in 1..=100u8 {
            let t = Target::new(q, effort);
            match t.perceptual() {
                Some(setting) => {
                    assert!((20..=80).contains(&q), "q{q}");
                    // Higher settings never give coarser steps.
                    assert!(setting >= last, "q{q} -> {setting} after {last}");
                    last = setting;
                    assert_eq!(t.luma(), scaled_table(&KLEIN, setting));
                    assert_eq!(t.chroma(), t.luma(), "one table for luma and chroma");
                }
                None => {
                    assert!(!(20..=80).contains(&q), "q{q}");
                    assert_eq!(t.luma(), scaled_table(&STD_LUMA_QT, q));
                    assert_eq!(t.chroma(), scaled_table(&STD_CHROMA_QT, q));
                }
            }
        }
        // The anchors themselves, and a point between two.
        for (q, setting) in PERCEPTUAL {
            assert_eq!(perceptual_quality(&PERCEPTUAL, q), Some(setting));
        }
        assert_eq!(perceptual_quality(&PERCEPTUAL, 52), Some(49)); // 47 + 4 * 2/5 = 48.6
    }
}
