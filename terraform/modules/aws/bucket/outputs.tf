output "name" {
  description = "The bucket's name."
  value       = aws_s3_bucket.weights.id
}

output "arn" {
  description = "The bucket's ARN."
  value       = aws_s3_bucket.weights.arn
}

output "aws_region" {
  description = "The Region the bucket lives in."
  value       = data.aws_region.current.name
}

output "url" {
  description = "The policy's bucket for this Region: s3://NAME/PREFIX."
  value       = "s3://${aws_s3_bucket.weights.id}/${var.prefix}"
}
