// @ts-check
// The shapes the API and Socket.IO give (shared/CONTRACT.md), as JSDoc types.

/**
 * @typedef {object} Conversation
 * @property {string} conversationId
 * @property {string} userName
 * @property {string} [lastMessageId]
 * @property {string} lastMessageBody
 * @property {string} lastTimestamp ISO-8601
 * @property {string} lastMessageStatus
 * @property {"inbound" | "outbound"} lastMessageDirection
 * @property {number} messageCount
 * @property {number} unreadCount
 * @property {string[]} participants
 * @property {string | null} [windowExpiresAt]
 * @property {string} [phoneNumberId] the business number it is with (absent on old or single-number data)
 * @property {string | null} [businessNumber] that number as people know it (its display number)
 */

/**
 * @typedef {object} MessageError
 * @property {number} [code]
 * @property {string} [title]
 * @property {string} [message]
 * @property {{details?: string}} [error_data]
 */

/**
 * @typedef {object} Message
 * @property {string} _id
 * @property {string} messageId
 * @property {string} [clientMessageId]
 * @property {string} conversationId
 * @property {string} [from]
 * @property {string} [to]
 * @property {string} timestamp ISO-8601
 * @property {string} type
 * @property {string} body
 * @property {string} status
 * @property {string} [userName]
 * @property {"inbound" | "outbound"} direction
 * @property {any} [content]
 * @property {any} [context]
 * @property {MessageError[] | null} [errors]
 * @property {string} [mediaUrl]
 * @property {number} [seq]
 * @property {string} [localPreview] object URL of a file being sent (ours)
 * @property {() => void} [retry] how to send it again (ours: a send the API refused)
 * @property {boolean} [retried] sent again already (ours)
 * @property {string} [conversationName] its conversation's name (search hits)
 * @property {{text: string, hit: boolean}[]} [highlight] its text in pieces, the matched words marked (search hits)
 * @property {string} [phoneNumberId] the business number it went through
 * @property {string | null} [businessNumber]
 */

/**
 * @typedef {object} StatusUpdate
 * @property {string} messageId
 * @property {string} status
 * @property {string} conversationId
 * @property {string} timestamp
 * @property {string} [clientMessageId]
 * @property {string} [previousMessageId]
 * @property {MessageError[]} [errors]
 * @property {number} [seq]
 * @property {string} [phoneNumberId]
 */

/**
 * One business number of the deployment (`GET /api/numbers`).
 * @typedef {object} BusinessNumber
 * @property {string} phoneNumberId
 * @property {string | null} businessNumber its display number, when a webhook has told it
 * @property {number} conversations
 * @property {number} unreadCount
 */

export {};
