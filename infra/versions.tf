# Terraform and provider requirements of the iac module.
#
# The module only needs the kreuzwerker/docker provider. On a machine without registry access,
# point Terraform at a local provider mirror (see docs/terraform.md).

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    docker = {
      source  = "kreuzwerker/docker"
      version = "~> 3.0"
    }
  }
}

provider "docker" {
  host = var.docker_host
}
