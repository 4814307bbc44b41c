-- What each output is (issue 16): its format (`jpeg`, or the input's own when the input was
-- kept under the never-larger rule), what was done about the input's colour profile
-- (`srgb`, `converted`, `ignored`, `kept`; NULL without one) and a note for the user.
ALTER TABLE images ADD COLUMN output_format TEXT;
ALTER TABLE images ADD COLUMN color_profile TEXT;
ALTER TABLE images ADD COLUMN note TEXT;
