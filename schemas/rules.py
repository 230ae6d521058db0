"""Value rules of the input contract (FUNNEL_SPEC.md section 1), shared by staging and schemas."""

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
EMPLOYEE_COUNT_PATTERN = r"^[+-]?[0-9]+$"
JOB_LEVELS = ("c_level", "vp", "director", "manager", "individual_contributor", "other")
# YYYY-MM-DD[T ]HH:MM:SS[.ffffff][Z|+HH:MM|-HH:MM]
TIMESTAMP_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})?$"
)
# Stage and activity names are lower-case identifiers; the config decides which exist.
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
TEAMS = ("marketing", "sales")
DIRECTIONS = ("entry", "forward", "backward")

LEAD_COLUMNS = ("lead_id", "created_at", "updated_at", "email", "source", "company", "industry",
                "country", "employee_count", "job_level")
LEAD_REQUIRED = ("lead_id", "created_at")
ACTIVITY_COLUMNS = ("activity_id", "lead_id", "occurred_at", "activity_type", "owner_id")
ACTIVITY_REQUIRED = ("activity_id", "lead_id", "occurred_at", "activity_type")

# What each contract column holds; it decides which input types can hold it (typed Parquet and
# database columns) and how its value is read. Every other contract column is free text.
ID_COLUMNS = ("lead_id", "activity_id")
TIMESTAMP_COLUMNS = ("created_at", "updated_at", "occurred_at")
COUNT_COLUMNS = ("employee_count",)
# Typed timestamps must lie in the range the text form can spell from 1970 on: [1970, 10000).
MIN_TIMESTAMP_US = 0
END_TIMESTAMP_US = 253_402_300_800_000_000  # 10000-01-01T00:00:00Z
REDACTED = "<redacted>"
