variable "name" {
  description = "The bucket's name; it lives in the Region of the aws provider this module is given."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.name)) && !can(regex("^[0-9.]+$", var.name)) && !strcontains(var.name, "..")
    error_message = "An S3 bucket name is 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit, and not an IP address."
  }
}

variable "prefix" {
  description = "Folder the control plane keeps the weights under: the policy's bucket is s3://NAME/PREFIX."
  type        = string
  default     = "models"
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", var.prefix))
    error_message = "The prefix is one or more path segments of letters, digits, '_' and '-', without leading or trailing '/'."
  }
}

variable "noncurrent_version_days" {
  description = "Days an overwritten or deleted object's old version is kept before it expires (rollback reach)."
  type        = number
  default     = 30
  validation {
    condition     = var.noncurrent_version_days >= 1 && floor(var.noncurrent_version_days) == var.noncurrent_version_days
    error_message = "noncurrent_version_days is a whole number of days, at least 1."
  }
}

variable "abort_incomplete_upload_days" {
  description = "Days an unfinished multipart upload is kept. The weight sync resumes a killed transfer from the parts S3 recorded, so this must outlast the longest pause between syncs (docs/weights.md)."
  type        = number
  default     = 7
  validation {
    condition     = var.abort_incomplete_upload_days >= 2 && floor(var.abort_incomplete_upload_days) == var.abort_incomplete_upload_days
    error_message = "abort_incomplete_upload_days is a whole number of days, at least 2: a shorter window would abort uploads the next sync means to resume."
  }
}

variable "kms_key_arn" {
  description = "A customer managed KMS key for default encryption; null uses the account's AWS managed key for S3."
  type        = string
  default     = null
  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/.+$", var.kms_key_arn))
    error_message = "kms_key_arn is a KMS key or alias ARN."
  }
}

variable "access_log_bucket" {
  description = "A bucket (in this Region) to receive server access logs under logs/NAME/; null leaves logging off."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Whether destroying the bucket deletes the weights in it (tests and throwaway stacks only)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for the bucket."
  type        = map(string)
  default     = {}
}
