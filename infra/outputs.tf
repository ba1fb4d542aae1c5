# What iac reads back with `terraform output -json`: per service the host address of the
# sidecar's mTLS listener (and of its edge listener, when it has one) and the container
# ids/names, plus the network id.

output "services" {
  description = "Per service: mTLS endpoint (and edge, or null) on the host, container ids and names, spec hash and image."
  value = {
    for key, svc in var.services : key => {
      host_ip = one([
        for p in docker_container.envoy[key].ports : p.ip if p.internal == var.mesh_port
      ])
      host_port = one([
        for p in docker_container.envoy[key].ports : p.external if p.internal == var.mesh_port
      ])
      edge_host_ip = one([
        for p in docker_container.envoy[key].ports : p.ip if p.internal == var.edge_port
      ])
      edge_host_port = one([
        for p in docker_container.envoy[key].ports : p.external if p.internal == var.edge_port
      ])
      app_container_id     = docker_container.app[key].id
      app_container_name   = docker_container.app[key].name
      envoy_container_id   = docker_container.envoy[key].id
      envoy_container_name = docker_container.envoy[key].name
      spec_hash            = svc.spec_hash
      image                = svc.app.image
    }
  }
}

output "network" {
  description = "The project network."
  value = {
    id   = docker_network.this.id
    name = docker_network.this.name
  }
}
