/**
 * What the cluster link reports for `/health` and `stats`: a leaf the broker's options can name
 * without importing the link itself.
 *
 * @module
 */

/** A server of the cluster, as `/health` shows it. */
export interface ClusterServer {
  /** Random per process. */
  id: string;
  /** `--server-name`, or host:port. */
  name: string;
  /** Whether this is the server answering. */
  self: boolean;
  /** Workers attached to it. */
  workers: number;
  /** Requesters connected to it. */
  requesters: number;
  /** Its ports, as it announces them. */
  urls: { worker?: string; requester?: string };
  /** ms since it was last heard from (0 for this server). */
  last_heard_ms: number;
}

/** A worker of the cluster, as `/health` lists it. */
export interface ClusterWorker {
  /** Its `client_id` on its server. */
  client_id: string;
  /** Its name. */
  name: string;
  /** The name of the server it is attached to. */
  server: string;
  /** Whether it takes work. */
  healthy: boolean;
  /** Requests it holds (for another server's worker: as last announced, plus this server's). */
  in_flight: number;
}

/** The link's state, for `/health` and `stats`. */
export interface ClusterStatus {
  /** The cluster name. */
  name: string;
  /** This server's name. */
  server: string;
  /** This server's id. */
  server_id: string;
  /** The NATS connection. */
  nats: "connecting" | "connected" | "disconnected" | "closed";
  /** The NATS node in use, while connected. */
  nats_server: string | null;
  /** Why NATS cannot be reached, while it cannot. */
  nats_error?: string;
  /** Every server this one knows, itself first. */
  servers: ClusterServer[];
  /** Every worker of the cluster, with the server it is attached to. */
  workers: ClusterWorker[];
}
