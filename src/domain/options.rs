//! What an upload asks of its outputs: a quality, a size box and a format. Checked once, at the
//! edge (the form fields, query parameters and settings), then carried as a value that cannot
//! be invalid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest side a box may name: JPEG's limit, so a box never asks for what no output can be.
pub const MAX_BOX_SIDE: u32 = 65_535;

/// The output format an upload asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    /// Baseline JPEG (the default).
    Jpeg,
    /// Lossy WebP.
    Webp,
    /// Per image, the smaller of JPEG and WebP made at similar visual quality.
    Auto,
}

impl FormatChoice {
    pub const ALL: [FormatChoice; 3] = [FormatChoice::Jpeg, FormatChoice::Webp, FormatChoice::Auto];

    pub fn as_str(self) -> &'static str {
        match self {
            FormatChoice::Jpeg => "jpeg",
            FormatChoice::Webp => "webp",
            FormatChoice::Auto => "auto",
        }
    }
}

impl fmt::Display for FormatChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FormatChoice {
    type Err = String;

    /// Case-insensitive; `jpg` is taken for `jpeg`, as file names spell it.
    fn from_str(raw: &str) -> Result<Self, String> {
        let lower = raw.trim().to_ascii_lowercase();
        match lower.as_str() {
            "jpeg" | "jpg" => Ok(FormatChoice::Jpeg),
            "webp" => Ok(FormatChoice::Webp),
            "auto" => Ok(FormatChoice::Auto),
            _ => Err(format!(
                "must be one of jpeg, webp or auto, not {}",
                super::show(raw)
            )),
        }
    }
}

/// The options one request's images are made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"quality": 75, "maxWidth": 2000, "maxHeight": 2000, "format": "jpeg"}))]
pub struct ImageOptions {
    /// Quality of the outputs, 1-100 (on JPEG's scale; WebP's is mapped to match).
    #[schema(minimum = 1, maximum = 100)]
    quality: u8,
    /// Outputs fit inside this width, aspect ratio kept, never enlarged; null: no limit.
    #[schema(minimum = 1, maximum = 65535)]
    max_width: Option<u32>,
    /// Outputs fit inside this height, aspect ratio kept, never enlarged; null: no limit.
    #[schema(minimum = 1, maximum = 65535)]
    max_height: Option<u32>,
    format: FormatChoice,
}

impl ImageOptions {
    /// Options from values already in range; `None` when one is not.
    pub fn new(
        quality: u8,
        max_width: Option<u32>,
        max_height: Option<u32>,
        format: FormatChoice,
    ) -> Option<Self> {
        let side_ok = |s: Option<u32>| s.is_none_or(|s| (1..=MAX_BOX_SIDE).contains(&s));
        ((1..=100).contains(&quality) && side_ok(max_width) && side_ok(max_height)).then_some(
            Self {
                quality,
                max_width,
                max_height,
                format,
            },
        )
    }

    pub fn quality(&self) -> u8 {
        self.quality
    }

    pub fn max_width(&self) -> Option<u32> {
        self.max_width
    }

    pub fn max_height(&self) -> Option<u32> {
        self.max_height
    }

    pub fn format(&self) -> FormatChoice {
        self.format
    }

    /// The stored form (JSON), also what the idempotency digest covers.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("options serialize")
    }

    /// Reads the stored form back; `None` for a value this version cannot use.
    pub fn from_json(json: &str) -> Option<Self> {
        let o: ImageOptions = serde_json::from_str(json).ok()?;
        Self::new(o.quality, o.max_width, o.max_height, o.format)
    }
}

/// The options as a client wrote them, each as text (a form field or a query parameter);
/// `None` or blank: the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptionsInput {
    pub quality: Option<String>,
    pub max_width: Option<String>,
    pub max_height: Option<String>,
    pub format: Option<String>,
}

impl OptionsInput {
    /// The field of this name (`quality`, `maxWidth`, `maxHeight`, `format`), if it is one.
    pub fn field_mut(&mut self, name: &str) -> Option<&mut Option<String>> {
        match name {
            "quality" => Some(&mut self.quality),
            "maxWidth" => Some(&mut self.max_width),
            "maxHeight" => Some(&mut self.max_height),
            "format" => Some(&mut self.format),
            _ => None,
        }
    }

    /// Every field of `self` that is set, else `other`'s.
    pub fn or(self, other: OptionsInput) -> OptionsInput {
        let pick = |a: Option<String>, b: Option<String>| {
            a.filter(|v| !v.trim().is_empty())
                .or(b.filter(|v| !v.trim().is_empty()))
        };
        OptionsInput {
            quality: pick(self.quality, other.quality),
            max_width: pick(self.max_width, other.max_width),
            max_height: pick(self.max_height, other.max_height),
            format: pick(self.format, other.format),
        }
    }

    /// Checks every field, filling the ones left out from `defaults`; every problem found.
    pub fn resolve(&self, defaults: &ImageOptions) -> Result<ImageOptions, Vec<OptionError>> {
        let mut errors = Vec::new();
        let quality = match given(&self.quality) {
            None => defaults.quality,
            Some(raw) => match raw.parse::<u8>() {
                Ok(q) if (1..=100).contains(&q) => q,
                _ => {
                    errors.push(OptionError::new(
                        "quality",
                        format!(
                            "quality must be a whole number from 1 to 100, not {}",
                            super::show(raw)
                        ),
                    ));
                    defaults.quality
                }
            },
        };
        let mut side = |field: &'static str, value: &Option<String>, default: Option<u32>| {
            let Some(raw) = given(value) else {
                return default;
            };
            match raw.parse::<u32>() {
                Ok(n) if (1..=MAX_BOX_SIDE).contains(&n) => Some(n),
                _ => {
                    errors.push(OptionError::new(
                        field,
                        format!(
                            "{field} must be a whole number of pixels from 1 to {MAX_BOX_SIDE}, \
                             not {}",
                            super::show(raw)
                        ),
                    ));
                    default
                }
            }
        };
        let max_width = side("maxWidth", &self.max_width, defaults.max_width);
        let max_height = side("maxHeight", &self.max_height, defaults.max_height);
        let format = match given(&self.format) {
            None => defaults.format,
            Some(raw) => raw.parse().unwrap_or_else(|message| {
                errors.push(OptionError::new("format", format!("format {message}")));
                defaults.format
            }),
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ImageOptions {
            quality,
            max_width,
            max_height,
            format,
        })
    }
}

/// A field's text, trimmed, when it is not blank.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// One refused option: the field, and why, in words for the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OptionError {
    /// The form field or query parameter: `quality`, `maxWidth`, `maxHeight` or `format`.
    pub field: &'static str,
    pub message: String,
}

impl OptionError {
    fn new(field: &'static str, message: String) -> Self {
        Self { field, message }
    }
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ImageOptions {
        ImageOptions::new(50, None, Some(900), FormatChoice::Jpeg).unwrap()
    }

    fn input(q: &str, w: &str, h: &str, f: &str) -> OptionsInput {
        let v = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        OptionsInput {
            quality: v(q),
            max_width: v(w),
            max_height: v(h),
            format: v(f),
        }
    }

    #[test]
    fn blank_fields_take_the_defaults() {
        assert_eq!(input("", "", "", "").resolve(&defaults()), Ok(defaults()));
        assert_eq!(
            input(" ", "", "  ", "").resolve(&defaults()),
            Ok(defaults())
        );
    }

    #[test]
    fn given_fields_win() {
        let o = input(" 75", "1200", "800", "WebP")
            .resolve(&defaults())
            .unwrap();
        assert_eq!(
            (o.quality(), o.max_width(), o.max_height(), o.format()),
            (75, Some(1200), Some(800), FormatChoice::Webp)
        );
        assert_eq!(
            input("", "", "", "jpg")
                .resolve(&defaults())
                .unwrap()
                .format(),
            FormatChoice::Jpeg
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = input("0", "-5", "1.5", "png")
            .resolve(&defaults())
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["quality", "maxWidth", "maxHeight", "format"]);
        assert!(errors[0].message.contains("from 1 to 100"), "{errors:?}");
        assert!(errors[3].message.contains("\"png\""), "{errors:?}");
        for bad in ["101", "abc", "50.0", "1e2"] {
            assert!(
                input(bad, "", "", "").resolve(&defaults()).is_err(),
                "{bad}"
            );
        }
        for bad in ["0", "65536", "99999999999", "12px"] {
            assert!(
                input("", bad, "", "").resolve(&defaults()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn form_fields_win_over_query_parameters() {
        let form = input("80", "", "", "");
        let query = input("60", "500", "", "auto");
        let o = form.or(query).resolve(&defaults()).unwrap();
        assert_eq!(
            (o.quality(), o.max_width(), o.format()),
            (80, Some(500), FormatChoice::Auto)
        );
    }

    #[test]
    fn stored_form_round_trips() {
        let o = input("75", "1200", "", "auto")
            .resolve(&defaults())
            .unwrap();
        assert_eq!(
            o.to_json(),
            r#"{"quality":75,"maxWidth":1200,"maxHeight":900,"format":"auto"}"#
        );
        assert_eq!(ImageOptions::from_json(&o.to_json()), Some(o));
        assert_eq!(
            ImageOptions::from_json(r#"{"quality":0,"format":"jpeg"}"#),
            None
        );
    }
}
