-- Which path made each output: 'requantized' (JPEG coefficients, no pixels) or 'pixels'.
ALTER TABLE images ADD COLUMN codec TEXT;
