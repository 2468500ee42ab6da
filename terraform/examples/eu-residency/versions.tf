terraform {
  required_version = ">= 1.9"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40, < 6.0"
    }
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0, < 7.0"
    }
  }
}

# Route 53 and IAM are global; the default provider carries them from an EU Region all the same.
provider "aws" {
  region = "eu-west-1"
}

provider "aws" {
  alias  = "eu_west"
  region = "eu-west-1"
}

provider "aws" {
  alias  = "eu_central"
  region = "eu-central-1"
}

provider "google" {
  project = var.gcp_project
}
