# The iac deployment, as a plain Terraform module for the kreuzwerker/docker provider:
#
#   docker_network.this          the project network (e.g. `iacnet`)
#   docker_image.this[image]     every image the services use, built locally beforehand by iac
#   docker_container.envoy[svc]  the sidecar: owner of the pod's network namespace, DNS alias <svc>,
#                                15000 published on 127.0.0.1; installs the pod's packet filter,
#                                then supervises Envoy
#   docker_container.app[svc]    the app (PID 1 iac-agent), joining the sidecar's network namespace
#
# All data comes from terraform.tfvars.json, rendered by iac (restart policies included); edit
# this file to change *how* the containers are created (logging, ...).
#
# Every container drops all capabilities and gets back only what its `security` object lists,
# runs with no-new-privileges and the memory limit iac rendered. The provider has no pids limit
# for docker_container (the docker provisioner sets one). Everything carries
# iac.managed-by=iac, which no image sets: `iac destroy` with the docker provisioner only ever
# touches objects with it.

locals {
  # Every distinct image named by a service (apps and sidecars).
  images = toset(flatten([
    for svc in var.services : [svc.app.image, svc.envoy.image]
  ]))
}

resource "docker_network" "this" {
  name   = var.network.name
  driver = "bridge"

  dynamic "labels" {
    for_each = merge(var.network.labels, { "iac.managed-by" = "iac" })
    content {
      label = labels.key
      value = labels.value
    }
  }
}

# Images are built (or imported) by iac on this engine before Terraform runs. The provider uses a
# local image as it is; keep_locally stops `terraform destroy` from deleting it.
resource "docker_image" "this" {
  for_each = local.images

  name         = each.key
  keep_locally = true
}

resource "docker_container" "envoy" {
  for_each = var.services

  name         = each.value.envoy.name
  image        = docker_image.this[each.value.envoy.image].image_id
  command      = length(each.value.envoy.command) > 0 ? each.value.envoy.command : null
  env          = [for k, v in each.value.envoy.env : "${k}=${v}"]
  stop_timeout = each.value.envoy.stop_timeout
  restart      = each.value.envoy.restart
  must_run     = true

  # The sidecar's command installs the pod's packet filter (only var.mesh_port reachable from
  # outside the pod), gives up NET_ADMIN, and runs Envoy with none of these capabilities.
  capabilities {
    add  = each.value.envoy.security.cap_add
    drop = each.value.envoy.security.cap_drop
  }
  security_opts = each.value.envoy.security.no_new_privileges ? ["no-new-privileges:true"] : null
  memory        = each.value.envoy.memory_mib
  memory_swap   = each.value.envoy.memory_mib

  networks_advanced {
    name    = docker_network.this.id
    aliases = each.value.envoy.aliases
  }

  dynamic "ports" {
    for_each = each.value.envoy.ports
    content {
      internal = ports.value.internal
      ip       = ports.value.ip
      external = ports.value.external
      protocol = "tcp"
    }
  }

  # Envoy config and the service's certificates, read-only.
  dynamic "mounts" {
    for_each = each.value.envoy.mounts
    content {
      type      = "bind"
      source    = mounts.value.source
      target    = mounts.value.target
      read_only = mounts.value.read_only
    }
  }

  dynamic "labels" {
    for_each = merge(each.value.envoy.labels, { "iac.managed-by" = "iac" })
    content {
      label = labels.key
      value = labels.value
    }
  }
}

resource "docker_container" "app" {
  for_each = var.services

  name    = each.value.app.name
  image   = docker_image.this[each.value.app.image].image_id
  command = length(each.value.app.command) > 0 ? each.value.app.command : null
  # The service's env (repos file, API) may hold secrets: sensitive, so `terraform plan`/`apply`
  # print "(sensitive value)" instead of it. (terraform.tfvars.json and the state still hold it;
  # iac keeps both in a 0700 work directory.)
  env          = sensitive([for k, v in each.value.app.env : "${k}=${v}"])
  stop_timeout = each.value.app.stop_timeout
  restart      = each.value.app.restart
  must_run     = true

  # The sidecar's network namespace (created first, so its filter is loading before the app
  # exists): the app reaches Envoy and the agent on 127.0.0.1, and keeps the pod's address
  # when it restarts.
  network_mode = "container:${docker_container.envoy[each.key].id}"

  capabilities {
    add  = each.value.app.security.cap_add
    drop = each.value.app.security.cap_drop
  }
  security_opts = each.value.app.security.no_new_privileges ? ["no-new-privileges:true"] : null
  memory        = each.value.app.memory_mib
  memory_swap   = each.value.app.memory_mib

  dynamic "mounts" {
    for_each = each.value.app.mounts
    content {
      type      = "bind"
      source    = mounts.value.source
      target    = mounts.value.target
      read_only = mounts.value.read_only
    }
  }

  dynamic "labels" {
    for_each = merge(each.value.app.labels, { "iac.managed-by" = "iac" })
    content {
      label = labels.key
      value = labels.value
    }
  }
}
