"""Dataset preflight: fetch, extract, match triplets, fit clips and masks."""
