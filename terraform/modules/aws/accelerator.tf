resource "aws_globalaccelerator_accelerator" "this" {
  count           = var.accelerator == null ? 0 : 1
  name            = var.name
  ip_address_type = "IPV4"
  enabled         = true
  tags            = var.tags

  dynamic "attributes" {
    for_each = var.accelerator.flow_logs_bucket == null ? [] : [var.accelerator.flow_logs_bucket]
    content {
      flow_logs_enabled   = true
      flow_logs_s3_bucket = attributes.value
      flow_logs_s3_prefix = "flow-logs/${var.name}/"
    }
  }
}

resource "aws_globalaccelerator_listener" "this" {
  count           = var.accelerator == null ? 0 : 1
  accelerator_arn = aws_globalaccelerator_accelerator.this[0].id
  client_affinity = "NONE"
  protocol        = "TCP"
  port_range {
    from_port = var.accelerator.port
    to_port   = var.accelerator.port
  }
}

resource "aws_globalaccelerator_endpoint_group" "this" {
  for_each                = var.accelerator == null ? {} : var.accelerator.endpoint_groups
  listener_arn            = aws_globalaccelerator_listener.this[0].id
  endpoint_group_region   = each.value.aws_region
  traffic_dial_percentage = 100

  dynamic "endpoint_configuration" {
    for_each = each.value.endpoints
    content {
      endpoint_id = endpoint_configuration.value
      weight      = 128
    }
  }

  lifecycle {
    # The control plane moves the dial and the weights every failover; terraform reverting them on the
    # next apply would undo a live decision.
    ignore_changes = [traffic_dial_percentage, endpoint_configuration]
  }
}

locals {
  listener_arn = var.accelerator == null ? null : aws_globalaccelerator_listener.this[0].id
}
