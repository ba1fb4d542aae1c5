# Inputs of the iac module. `iac` renders all of them into `terraform.tfvars.json` from its
# planned Stack (crates/iac-core/src/stack.rs); every key it writes must be declared here, which
# iac checks offline before running Terraform.

variable "docker_host" {
  description = "Docker engine the provider talks to, e.g. unix:///var/run/docker.sock or tcp://host:2376."
  type        = string
  default     = "unix:///var/run/docker.sock"
}

variable "project" {
  description = "iac project name; every object carries it in the iac.project label."
  type        = string
}

variable "network" {
  description = "The user network every app container joins (with its service name as DNS alias)."
  type = object({
    name   = string
    labels = map(string)
  })
}

variable "mesh_port" {
  description = "Container port of each sidecar's inbound mTLS listener; its host port is reported in the outputs."
  type        = number
  default     = 15000
}

variable "edge_port" {
  description = "Container port of a sidecar's edge listener (plain HTTP to the app, no client certificate); its host address is reported in the outputs."
  type        = number
  default     = 15080
}

variable "services" {
  description = "One entry per service, keyed by service name: the app container and its Envoy sidecar."
  type = map(object({
    # Hash of everything that makes up the service's pair of containers (also in their labels).
    spec_hash = string

    # The app joins its sidecar's network namespace (like a container of a pod).
    app = object({
      name    = string
      image   = string
      command = list(string)
      env     = map(string)
      labels  = map(string)
      mounts = list(object({
        source    = string
        target    = string
        read_only = bool
      }))
      stop_timeout = number
      # Capabilities added back after dropping, and no-new-privileges.
      security = object({
        no_new_privileges = bool
        cap_add           = list(string)
        cap_drop          = list(string)
      })
      # Memory limit in MiB, swap included; omitted means no limit.
      memory_mib = optional(number)
      # The engine's restart policy: "no" or "unless-stopped".
      restart = string
    })

    # The sidecar owns the pod's network namespace: it is on var.network and publishes the ports.
    envoy = object({
      name    = string
      image   = string
      command = list(string)
      env     = map(string)
      labels  = map(string)
      # DNS aliases on var.network.
      aliases = list(string)
      # Published ports; `external` omitted means an ephemeral host port picked by the engine.
      ports = list(object({
        internal = number
        ip       = string
        external = optional(number)
      }))
      mounts = list(object({
        source    = string
        target    = string
        read_only = bool
      }))
      stop_timeout = number
      # NET_ADMIN (and what it needs to drop it again) to install the pod's packet filter.
      security = object({
        no_new_privileges = bool
        cap_add           = list(string)
        cap_drop          = list(string)
      })
      memory_mib = optional(number)
      restart    = string
    })
  }))
}
