"""Where a bucket's bytes live: region or location to jurisdiction.

A jurisdiction is an ISO 3166-1 alpha-2 country code, or ``None`` when a location
spans several countries (a multi-region) and so can never count as domestic. The
tables are explicit rather than derived from region names: ``ap-northeast-2`` is
Seoul but ``ap-northeast-3`` is Osaka, and a guess from the prefix would get that wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

# AWS regions (https://docs.aws.amazon.com/global-infrastructure/latest/regions/).
AWS_REGIONS: dict[str, tuple[str, str]] = {
    "us-east-1": ("US", "N. Virginia"),
    "us-east-2": ("US", "Ohio"),
    "us-west-1": ("US", "N. California"),
    "us-west-2": ("US", "Oregon"),
    "us-gov-east-1": ("US", "GovCloud (US-East)"),
    "us-gov-west-1": ("US", "GovCloud (US-West)"),
    "af-south-1": ("ZA", "Cape Town"),
    "ap-east-1": ("HK", "Hong Kong"),
    "ap-east-2": ("TW", "Taipei"),
    "ap-south-1": ("IN", "Mumbai"),
    "ap-south-2": ("IN", "Hyderabad"),
    "ap-northeast-1": ("JP", "Tokyo"),
    "ap-northeast-2": ("KR", "Seoul"),
    "ap-northeast-3": ("JP", "Osaka"),
    "ap-southeast-1": ("SG", "Singapore"),
    "ap-southeast-2": ("AU", "Sydney"),
    "ap-southeast-3": ("ID", "Jakarta"),
    "ap-southeast-4": ("AU", "Melbourne"),
    "ap-southeast-5": ("MY", "Malaysia"),
    "ap-southeast-7": ("TH", "Thailand"),
    "ca-central-1": ("CA", "Central"),
    "ca-west-1": ("CA", "Calgary"),
    "cn-north-1": ("CN", "Beijing"),
    "cn-northwest-1": ("CN", "Ningxia"),
    "eu-central-1": ("DE", "Frankfurt"),
    "eu-central-2": ("CH", "Zurich"),
    "eu-west-1": ("IE", "Ireland"),
    "eu-west-2": ("GB", "London"),
    "eu-west-3": ("FR", "Paris"),
    "eu-south-1": ("IT", "Milan"),
    "eu-south-2": ("ES", "Spain"),
    "eu-north-1": ("SE", "Stockholm"),
    "il-central-1": ("IL", "Tel Aviv"),
    "me-south-1": ("BH", "Bahrain"),
    "me-central-1": ("AE", "UAE"),
    "mx-central-1": ("MX", "Mexico"),
    "sa-east-1": ("BR", "Sao Paulo"),
}

# Google Cloud Storage locations (https://cloud.google.com/storage/docs/locations).
# Multi-regions span several countries: jurisdiction None, never domestic.
GCS_LOCATIONS: dict[str, tuple[str | None, str]] = {
    "asia-east1": ("TW", "Taiwan"),
    "asia-east2": ("HK", "Hong Kong"),
    "asia-northeast1": ("JP", "Tokyo"),
    "asia-northeast2": ("JP", "Osaka"),
    "asia-northeast3": ("KR", "Seoul"),
    "asia-south1": ("IN", "Mumbai"),
    "asia-south2": ("IN", "Delhi"),
    "asia-southeast1": ("SG", "Singapore"),
    "asia-southeast2": ("ID", "Jakarta"),
    "australia-southeast1": ("AU", "Sydney"),
    "australia-southeast2": ("AU", "Melbourne"),
    "europe-west1": ("BE", "Belgium"),
    "europe-west2": ("GB", "London"),
    "europe-west3": ("DE", "Frankfurt"),
    "europe-west4": ("NL", "Netherlands"),
    "europe-west6": ("CH", "Zurich"),
    "europe-north1": ("FI", "Finland"),
    "us-central1": ("US", "Iowa"),
    "us-east1": ("US", "South Carolina"),
    "us-east4": ("US", "N. Virginia"),
    "us-west1": ("US", "Oregon"),
    "northamerica-northeast1": ("CA", "Montreal"),
    "southamerica-east1": ("BR", "Sao Paulo"),
    # Predefined dual-regions: both halves in one country.
    "asia1": ("JP", "Tokyo + Osaka dual-region"),
    "eur4": (None, "Finland + Netherlands dual-region: two countries"),
    "nam4": ("US", "Iowa + South Carolina dual-region"),
    # Multi-regions.
    "asia": (None, "Asia multi-region"),
    "eu": (None, "EU multi-region"),
    "us": (None, "US multi-region"),
}


@dataclass(frozen=True)
class Placement:
    """Where a bucket is, as far as the orchestrator can tell."""

    provider: str
    location: str
    jurisdiction: str | None  # None: spans several countries, or unknown
    description: str
    source: str = "discovered"  # "discovered" from the API, or "declared" in the policy

    def is_in(self, country: str) -> bool:
        return self.jurisdiction is not None and self.jurisdiction == country.upper()


def placement_of(provider: str, location: str, source: str = "discovered") -> Placement:
    """Map a provider's region/location name to a :class:`Placement`.

    An unknown name maps to jurisdiction ``None`` (never domestic), described as unknown.
    """
    loc = (location or "").strip().lower()
    if provider == "s3":
        # GetBucketLocation answers None/"" for us-east-1 and "EU" for old eu-west-1 buckets.
        loc = {"": "us-east-1", "none": "us-east-1", "eu": "eu-west-1"}.get(loc, loc)
        country, description = AWS_REGIONS.get(loc, (None, f"unknown AWS region {loc!r}"))
    elif provider == "gs":
        country, description = GCS_LOCATIONS.get(loc, (None, f"unknown GCS location {loc!r}"))
    else:
        raise ValueError(f"unknown provider {provider!r}")
    return Placement(provider, loc, country, description, source)
