"""Recognition: nearest-subject matching, the int8 scan, the watchlist index, enrolment templates."""
