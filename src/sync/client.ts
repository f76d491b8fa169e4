/** The follower's side of talking to its leader: the headers it sends and how it reads a refusal. */
/** The headers of a follower's request to its leader: `Authorization` when it has a token, else none. */
export function authorizationHeader(authorization: string | undefined): Record<string, string> | undefined {
  return authorization === undefined ? undefined : { Authorization: authorization };
}

/**
 * A follower's one-line reason when its leader answers `401` (shown by its readiness line); `sent`: it sent a token.
 */
export function leaderRefusal(sent: boolean): string {
  return sent
    ? "the leader refused this follower's token (401): MEHDB_READ_TOKEN_FILE must hold the leader's read token"
    : "the leader wants a token (401): give this follower MEHDB_READ_TOKEN_FILE with the leader's read token";
}
