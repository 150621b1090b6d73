"""Watermark service: keyed, blind audio watermark on every generated segment, and its detector."""
